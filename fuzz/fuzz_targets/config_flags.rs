#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| clca_fuzz::config_flags(data));
