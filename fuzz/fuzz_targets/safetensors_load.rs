#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| clca_fuzz::safetensors_load(data));
