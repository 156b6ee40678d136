#!/usr/bin/env bash
# Builds the libFuzzer targets with clang++ and runs each for SECONDS (default 60).
#
#   tests/fuzz/run_fuzzers.sh [SECONDS]
#
# Targets (see the comment at the top of each source):
#   fuzz_config     bytes -> parse_config(); only ConfigError may come out; accepted configs must
#                   round-trip through to_yaml()
#   fuzz_reference  bytes -> a dispatch problem; align_reference() must equal the oracle
#
# Everything goes to $MOE_DISPATCH_FUZZ_DIR (default build-fuzz/ at the repository root, git-ignored):
# the binaries, a working corpus per target (a fresh copy of the committed seeds, which are never
# modified) and, on a finding, the reproducing input (crash-*, leak-*, timeout-*, oom-*). Reproduce
# one with: build-fuzz/fuzz_<target> build-fuzz/artifacts/<file>.
# Exits non-zero when a build fails or any target reports a crash, leak, trap, timeout or OOM.
#
# Environment: CLANGXX (default clang++), CUDA_HOME (default /usr/local/cuda; only its headers are
# needed, errors.hpp includes cuda_runtime_api.h), YAML_CPP_LIB (default Debian's static archive).
# Debian's libyaml-cpp.a is built against libstdc++, which clang++ also uses on Debian.
set -euo pipefail

seconds="${1:-60}"
if ! [[ "${seconds}" =~ ^[0-9]+$ ]] || [[ "${seconds}" -lt 1 ]]; then
  echo "usage: $0 [SECONDS]   (a positive whole number of seconds per target)" >&2
  exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
out="${MOE_DISPATCH_FUZZ_DIR:-${root}/build-fuzz}"
cxx="${CLANGXX:-clang++}"
cuda="${CUDA_HOME:-/usr/local/cuda}"
yaml_lib="${YAML_CPP_LIB:-/usr/lib/x86_64-linux-gnu/libyaml-cpp.a}"

for need in "${cuda}/include/cuda_runtime_api.h" "${cuda}/lib64/libcudart_static.a" "${yaml_lib}"; do
  if [[ ! -e "${need}" ]]; then
    echo "run_fuzzers: missing ${need} (set CUDA_HOME / YAML_CPP_LIB)" >&2
    exit 2
  fi
done

cxxflags=(-std=c++20 -g -O1 -fno-omit-frame-pointer
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
  -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion
  -I"${root}/include" -I"${root}" -I"${root}/tests" -isystem "${cuda}/include")
ldflags=(-L"${cuda}/lib64" -lcudart_static -ldl -lpthread -lrt)

rm -rf "${out}/artifacts"  # findings of this run only
mkdir -p "${out}/artifacts"

build() {  # build NAME SOURCES...
  local name="$1"
  shift
  echo "== building ${name}"
  "${cxx}" "${cxxflags[@]}" "$@" "${ldflags[@]}" -o "${out}/${name}"
}

build fuzz_reference "${here}/fuzz_reference.cpp" \
  "${root}/runtime/reference.cpp" "${root}/runtime/errors.cpp"
build fuzz_config "${here}/fuzz_config.cpp" \
  "${root}/runtime/config.cpp" "${root}/runtime/config_yaml.cpp" "${root}/runtime/errors.cpp" \
  "${yaml_lib}"

# Leak checking is on by default under libFuzzer + ASan; the CUDA runtime is linked but never
# initialised, so the shadow gap needs no special handling.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

status=0
run() {  # run NAME SEED_DIR [EXTRA FLAGS...]
  local name="$1" seeds="$2"
  shift 2
  local corpus="${out}/corpus_${name}"
  rm -rf "${corpus}"
  mkdir -p "${corpus}"
  cp "${seeds}"/* "${corpus}/"
  echo "== fuzzing ${name} for ${seconds}s (seeds: ${seeds#"${root}"/})"
  if "${out}/${name}" -max_total_time="${seconds}" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="${out}/artifacts/${name}-" "$@" "${corpus}" \
      >"${out}/${name}.log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|^Done ' "${out}/${name}.log" || true
    echo "== ${name}: OK ($(find "${corpus}" -type f | wc -l) corpus entries; log ${out}/${name}.log)"
  else
    status=1
    tail -n 60 "${out}/${name}.log"
    echo "== ${name}: FAILED (log ${out}/${name}.log; reproducer under ${out}/artifacts/)" >&2
  fi
}

run fuzz_reference "${here}/corpus_reference" -max_len=20000
run fuzz_config "${here}/corpus_config" -dict="${here}/config.dict" -max_len=4096

exit "${status}"
