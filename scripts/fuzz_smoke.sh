#!/usr/bin/env bash
# CI's fuzz smoke run: every fuzz target for CLCA_FUZZ_SMOKE_SECONDS (default 25) under
# libFuzzer + AddressSanitizer, installing a minimal nightly toolchain when there is none
# (scripts/fuzz.sh; the longer run is `bash scripts/fuzz.sh 3600`). Fails on any crash, OOM
# (a single allocation above 2 GiB included) or timeout. The fuzz build goes to its own target
# folder so it does not invalidate the stable build's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec bash scripts/fuzz.sh "${CLCA_FUZZ_SMOKE_SECONDS:-25}" safetensors_load config_flags plan_model
