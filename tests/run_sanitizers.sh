#!/usr/bin/env bash
# Runs the gpu suites' representative cases under compute-sanitizer: memcheck, racecheck,
# synccheck and initcheck. Usage: tests/run_sanitizers.sh BIN_DIR [LOG_DIR]
# Exits non-zero when any tool reports an error. Needs a GPU and compute-sanitizer on PATH.
set -u
bin=${1:?usage: run_sanitizers.sh BIN_DIR [LOG_DIR]}
logs=${2:-.}
mkdir -p "$logs"
export MOE_DISPATCH_SOURCE_DIR=${MOE_DISPATCH_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
# The full sweep is too slow under the sanitizers; these cases cover every variant (every small
# shape and cluster exchange, the large one with two kernels and with three), every output, expert
# maps, clamped counts, capture, child graphs, overflow (and its growth), align_async() and ids at
# the ends of int32.
kernel_cases='the tiny variant is exact*,each small shape*,the large variant is exact*,skewed*,top_k 32*,expert_map*,an expert_map entry*,two runs*,a count outside*,a count below*,a count passed*'
stage_cases='run inside*,a bucket graph*,run_device_count*,counts above*,an engine-registered*,lazy*,an overflow growth*,align_async*'
reliability_cases='ids outside*'
suites=("kernels_test:$kernel_cases" "stage_test:$stage_cases" "reliability_test:$reliability_cases")
# The suites exit 77 without a device (nothing would match below).
"$bin/kernels_test" --list-test-cases >/dev/null 2>&1
if [ $? -eq 77 ]; then
  echo "SKIPPED: no CUDA device visible; the sanitizers need a GPU"
  exit 77
fi
status=0
# Every pattern must match a case: a renamed case would otherwise drop out of the runs unnoticed.
for suite in "${suites[@]}"; do
  name=${suite%%:*}
  IFS=, read -ra patterns <<<"${suite#*:}"
  for pattern in "${patterns[@]}"; do
    matched=$("$bin/$name" --list-test-cases --test-case="$pattern" 2>&1 |
      grep -oE "passing the current filters: [0-9]+" | grep -oE "[0-9]+$")
    if [ "${matched:-0}" -eq 0 ]; then
      echo "no test case of $name matches '$pattern'"
      status=1
    fi
  done
done
for tool in memcheck racecheck synccheck initcheck; do
  for suite in "${suites[@]}"; do
    name=${suite%%:*}
    cases=${suite#*:}
    log="$logs/sanitizer-$tool-$name.log"
    extra=()
    [ "$tool" = memcheck ] && extra=(--leak-check full)
    "$sanitizer" --tool "$tool" --error-exitcode 99 "${extra[@]}" \
      "$bin/$name" --test-case="$cases" >"$log" 2>&1
    rc=$?
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -1)
    printf '%-10s %-13s rc=%-3s %s\n' "$tool" "$name" "$rc" "$summary"
    [ $rc -ne 0 ] && status=1
  done
done
exit $status
