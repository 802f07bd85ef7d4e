#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each one: first a replay of its
# committed corpus (fuzz/corpus/TARGET and fuzz/regressions/TARGET: every
# input must still pass), then FUZZ_SECONDS of fresh fuzzing.
#
#   fuzz/run.sh                 # `make fuzz-smoke`: 10 s per target
#   FUZZ_SECONDS=3600 fuzz/run.sh vsock_queues   # `make fuzz`: long runs
#
# Works on stable Rust: `--sanitizer none` needs no nightly flags (libFuzzer
# still gets its coverage counters; Rust's own checks find the bugs). New
# inputs go to target/fuzz-corpus/TARGET, crashes to fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-10}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz
fi
# The instrumented build takes minutes from scratch: keep it in the user cache
# so fresh clones reuse it (cargo rebuilds what changed).
target_dir=${UNIPOD_FUZZ_TARGET_DIR:-$HOME/.cache/unipod/fuzz-target}
echo "[fuzz] cargo fuzz build --sanitizer none (release, in $target_dir)"
cargo fuzz build --sanitizer none -O --target-dir "$target_dir"
bin=$target_dir/x86_64-unknown-linux-gnu/release
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "regressions/$t" "artifacts/$t" "../target/fuzz-corpus/$t"
  # Archives need room; device inputs are rings and a few buffers.
  case $t in image_*) max_len=65536 ;; *) max_len=4096 ;; esac
  common=(-max_len=$max_len -timeout=10 -rss_limit_mb=1024 "-artifact_prefix=artifacts/$t/")
  if ! "$bin/$t" "${common[@]}" -runs=0 "corpus/$t" "regressions/$t" >"../target/fuzz-$t.log" 2>&1; then
    echo "[fuzz] $t: FAILED replaying its corpus; see target/fuzz-$t.log"; status=1; continue
  fi
  if ! "$bin/$t" "${common[@]}" -max_total_time="$seconds" -print_final_stats=1 \
      "../target/fuzz-corpus/$t" "corpus/$t" >>"../target/fuzz-$t.log" 2>&1; then
    echo "[fuzz] $t: FAILED, crash in artifacts/$t/; see target/fuzz-$t.log"; status=1; continue
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "../target/fuzz-$t.log" | grep -o '[0-9]*$' || echo '?')
  echo "[fuzz] $t: corpus replayed, ${seconds} s fuzzed, $execs executions, no crash"
done
exit $status
