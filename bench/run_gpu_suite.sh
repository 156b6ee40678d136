#!/usr/bin/env bash
# Everything that needs the GPU, in one batch: gpu tests, sanitizers, benchmarks and the sample.
# Usage: bench/run_gpu_suite.sh BIN_DIR OUT_DIR [full|quick|verify]   (each step is limited to
# STEP_TIMEOUT seconds, 300 by default; expert_parallel_test to 120). quick: the gpu tests and a
# short serving loop; verify: those, the sanitizers and `variant_bench exchange` (a change's first
# run); full (default): everything.
# Writes logs, JSON and markdown under OUT_DIR; prints the tables last.
set -u
bin=${1:?usage: run_gpu_suite.sh BIN_DIR OUT_DIR [full|quick|verify]}
out=${2:?usage: run_gpu_suite.sh BIN_DIR OUT_DIR [full|quick|verify]}
mode=${3:-full}
here=$(cd "$(dirname "$0")/.." && pwd)
export MOE_DISPATCH_SOURCE_DIR=$here
mkdir -p "$out"
status=0
step() {  # name, command...: runs, logs, records the exit code
  local name=$1; shift
  local t0=$SECONDS
  timeout "${STEP_TIMEOUT:-300}" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  printf '%-28s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$out/summary.txt"
  [ $rc -ne 0 ] && status=1
  return 0
}
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  date -u +%Y-%m-%dT%H:%MZ
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"
step kernels_test "$bin/kernels_test"
step stage_test "$bin/stage_test"
step reliability_test "$bin/reliability_test"
[ -x "$bin/expert_parallel_test" ] && STEP_TIMEOUT=120 step expert_parallel_test "$bin/expert_parallel_test"
step serving_loop_gpu "$bin/serving_loop" --backend gpu --steps 2000 --check-every 10 --json "$out/serving_short.json"
if [ "$mode" = full ] || [ "$mode" = verify ]; then
  step sanitizers bash "$here/tests/run_sanitizers.sh" "$bin" "$out"
  step variant_bench_exchange "$bin/variant_bench" exchange
fi
if [ "$mode" = full ]; then
  step variant_bench "$bin/variant_bench"
  step floor_bench "$bin/floor_bench"
  step bench_kernels "$bin/dispatch_bench" kernels --json "$out/bench_kernels.json" --md "$out/bench_kernels.md"
  step bench_stage_default "$bin/dispatch_bench" stage "$here/configs/default.yaml" --json "$out/bench_stage_default.json" --md "$out/bench_stage_default.md"
  step bench_stage_deepseek "$bin/dispatch_bench" stage "$here/configs/deepseek-v3.yaml" --json "$out/bench_stage_deepseek.json" --md "$out/bench_stage_deepseek.md"
  step serving_loop_20k "$bin/serving_loop" --backend gpu --steps 20000 --check-every 100 --json "$out/serving_20k.json"
  step soak_1m "$bin/serving_loop" --backend gpu --soak --json "$out/soak.json"
fi
echo; cat "$out/summary.txt"
exit $status
