#!/usr/bin/env bash
# Fuzzes Kura's input parsers with cargo-fuzz (libFuzzer + AddressSanitizer): every target in
# tests/fuzz/fuzz_targets for KURA_FUZZ_SECONDS seconds each (default 20; the long mode is 1800).
# CI does not run this script (a cold sanitizer build takes about 20 min): its short mode is the
# fuzz_smoke test of `cargo test --release` (tests/fuzz/smoke.rs), the same target bodies.
# Fails when a target crashes (panic, abort, stack overflow, sanitizer report, out-of-memory,
# timeout); the input is then in $KURA_FUZZ_WORK/artifacts/<target>/ (see tests/fuzz/README.md).
#   KURA_FUZZ_SECONDS      seconds per target (default 20)
#   KURA_FUZZ_TARGETS      space-separated targets to run (default: all)
#   KURA_FUZZ_TARGET_DIR   cargo target dir of the fuzz build (default <main target dir>/fuzz-build;
#                          the fuzz build has its own flags, so it never shares the main build's)
#   KURA_FUZZ_WORK         corpora and artifacts (default <main target dir>/fuzz-work; the corpus
#                          found there is kept and grows from run to run)
set -euo pipefail
cd "$(dirname "$0")/../.."
# cargo-fuzz passes -Z flags to rustc; stable rustc accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "tests/fuzz/run.sh: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
if ! python3 -c 'import pydicom' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check pydicom
fi
main_target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
target_dir="${KURA_FUZZ_TARGET_DIR:-$main_target/fuzz-build}"
work="${KURA_FUZZ_WORK:-$main_target/fuzz-work}"
seconds="${KURA_FUZZ_SECONDS:-20}"
targets="${KURA_FUZZ_TARGETS:-multipart part10 query frames_range render_params metadata_writers frame_map}"

python3 tests/fuzz/seeds.py "$work/seeds"
started=$(date +%s)
cargo fuzz build --fuzz-dir tests/fuzz --target-dir "$target_dir"
echo "tests/fuzz/run.sh: fuzz build took $(($(date +%s) - started)) s"

failed=()
for target in $targets; do
  case "$target" in
    part10 | multipart | metadata_writers) max_len=65536 ;;
    *) max_len=4096 ;;
  esac
  mkdir -p "$work/corpus/$target" "$work/artifacts/$target"
  echo "tests/fuzz/run.sh: fuzzing $target for $seconds s"
  # -rss_limit_mb: a request's parse must not need more; -timeout: nor take seconds per input.
  status=0
  cargo fuzz run --fuzz-dir tests/fuzz --target-dir "$target_dir" "$target" "$work/corpus/$target" "$work/seeds/$target" -- \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$target/" >"$work/$target.log" 2>&1 || status=$?
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^==[0-9]+==|^stat::(number_of_executed_units|average_exec_per_sec)|SUMMARY|panicked at|Test unit written' \
    "$work/$target.log" || true
  if [ "$status" -ne 0 ] || grep -q 'Test unit written' "$work/$target.log"; then
    failed+=("$target")
  fi
done
if [ "${#failed[@]}" -ne 0 ]; then
  echo "tests/fuzz/run.sh: FAILED: ${failed[*]} (inputs in $work/artifacts/, logs in $work/<target>.log)" >&2
  exit 1
fi
echo "tests/fuzz/run.sh: all targets ran $seconds s without a crash"
