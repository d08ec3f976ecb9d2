#!/usr/bin/env bash
# CI's fuzz smoke run, on the stable toolchain: every target's corpus and regression inputs
# replayed, then a seeded mutation loop of CLCA_FUZZ_MUTATIONS (default 8000) inputs per corpus
# file through the same target bodies (tests/fuzz_corpus.rs, fuzz/src/lib.rs; about 70 s on a
# 2-core machine). Coverage-guided libFuzzer + AddressSanitizer on nightly is
# `bash scripts/fuzz.sh SECONDS` (the recorded totals are in docs/reliability.md); it builds the
# whole dependency tree under ASan (about 13 min on 2 cores), too long for CI's 30-minute limit,
# so CI runs it only with CLCA_FUZZ_NIGHTLY=1. Fails on any panic.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -n "${CLCA_FUZZ_NIGHTLY:-}" ]; then
    exec bash scripts/fuzz.sh "${CLCA_FUZZ_SMOKE_SECONDS:-25}" safetensors_load config_flags plan_model
fi
CLCA_FUZZ_MUTATIONS=${CLCA_FUZZ_MUTATIONS:-8000} cargo test --test fuzz_corpus -- --nocapture
