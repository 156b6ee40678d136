// GPU suite for how DispatchStage behaves when things go wrong or get busy: construction without
// enough device memory, a missing device, a sticky error left by someone else's kernel (in a child
// process: it ruins the CUDA context), two host threads driving two stages for 100k steps each,
// bad input at every public entry point, and moving or destroying a stage with work queued.
#include <doctest/doctest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <latch>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "moe_dispatch/align.hpp"
#include "moe_dispatch/config.hpp"
#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/dispatch_stage.hpp"
#include "moe_dispatch/errors.hpp"
#include "moe_dispatch/reference.hpp"
#include "support/device_check.hpp"
#include "support/device_routing.hpp"
#include "support/fault.hpp"
#include "support/gpu.hpp"
#include "support/stage_check.hpp"

extern const bool kNeedsGpu;
const bool kNeedsGpu = true;

extern char** environ;

namespace md = moe_dispatch;
using md::test::Routing;

namespace {

std::size_t device_free_bytes() {
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
  MOE_DISPATCH_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return free_bytes;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// True when `text` holds "NAME.EXT:LINE: " for a C++ or CUDA source (where a CudaError was raised).
bool names_file_and_line(const std::string& text) {
  for (const char* ext : {".cpp:", ".cu:", ".hpp:", ".cuh:"}) {
    for (std::size_t at = text.find(ext); at != std::string::npos; at = text.find(ext, at + 1)) {
      std::size_t i = at + std::strlen(ext);
      const std::size_t digits_begin = i;
      while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
      if (i > digits_begin && i < text.size() && text[i] == ':') return true;
    }
  }
  return false;
}

std::int64_t total_replays(const md::DispatchStage& stage) {
  std::int64_t replays = 0;
  for (const md::BucketStats& b : stage.stats().buckets) replays += b.replays;
  return replays;
}

using md::test::fetch;
using md::test::poison;
using md::test::run_and_compare;
using md::test::small_config;

// Holds plain cudaMalloc chunks until less than `leave + 1 MiB` of device memory is free.
class MemoryHog {
 public:
  explicit MemoryHog(std::size_t leave) {
    for (std::size_t chunk = std::size_t{1} << 30; chunk >= (std::size_t{1} << 20); chunk /= 2) {
      while (device_free_bytes() >= leave + chunk) {
        void* p = nullptr;
        if (cudaMalloc(&p, chunk) != cudaSuccess) {
          cudaGetLastError();  // an allocation failure is not sticky; try a smaller chunk
          break;
        }
        chunks_.emplace_back(p);
      }
    }
  }

 private:
  std::vector<md::UniqueHandle<md::DeviceMemoryTraits>> chunks_;
};

// The first number after "needs " in `text`; -1 when there is none.
std::int64_t needed_bytes_in(const std::string& text) {
  const std::size_t at = text.find("needs ");
  if (at == std::string::npos) return -1;
  std::size_t i = at + 6;
  std::int64_t value = -1;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    value = (value < 0 ? 0 : value * 10) + (text[i] - '0');
  }
  return value;
}

// Stream-ordered copies of each step's outputs (their defined extents) into a device ring, and the
// check of every recorded step against the host reference. The routing of a step is
// hashed_routing(num_tokens * top_k, seed, E), so the host regenerates it from (count, seed).
class OutputHistory {
 public:
  OutputHistory(const md::DispatchConfig& cfg, int slots)
      : shape_(md::shape_of(cfg)),
        max_numel_(std::int64_t{cfg.max_tokens()} * cfg.top_k),
        sorted_slot_(static_cast<std::size_t>(md::sorted_capacity(shape_, max_numel_))),
        blocks_slot_(static_cast<std::size_t>(md::expert_ids_capacity(shape_, max_numel_))),
        slot_(sorted_slot_ + blocks_slot_ + 4),
        ring_(slot_ * static_cast<std::size_t>(slots)),
        host_(ring_.size()),
        steps_(static_cast<std::size_t>(slots)) {}

  int slots() const { return static_cast<int>(steps_.size()); }

  void poison(cudaStream_t stream) {
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemsetAsync(ring_.get(), md::test::kPoisonByte, ring_.bytes(), stream));
  }

  // Enqueues the copies of `out` (a run of num_tokens rows routed with `seed`) into `slot`.
  void record(int slot, const md::DispatchOutputs& out, int num_tokens, std::uint32_t seed,
              std::int64_t step, cudaStream_t stream) {
    const std::int64_t numel = std::int64_t{num_tokens} * shape_.top_k;
    std::int32_t* dst = ring_.get() + slot_ * static_cast<std::size_t>(slot);
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpyAsync(
        dst, out.sorted_token_ids, static_cast<std::size_t>(md::sorted_capacity(shape_, numel)) * 4,
        cudaMemcpyDeviceToDevice, stream));
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpyAsync(dst + sorted_slot_, out.expert_ids,
                        static_cast<std::size_t>(md::expert_ids_capacity(shape_, numel)) * 4,
                        cudaMemcpyDeviceToDevice, stream));
    // num_tokens_post_pad, then the counters: invalid ids, count clamped, count used.
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpyAsync(dst + sorted_slot_ + blocks_slot_,
                                            out.num_tokens_post_pad, 16, cudaMemcpyDeviceToDevice,
                                            stream));
    steps_[static_cast<std::size_t>(slot)] = Step{num_tokens, seed, step};
  }

  // Synchronizes `stream`, copies slots [0, used) back and checks each against the reference.
  // Returns the number of steps that differ; describes the first few in `failures`.
  int check(int used, cudaStream_t stream, const std::string& label,
            std::vector<std::string>& failures) {
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpyAsync(host_.data(), ring_.get(),
                                            slot_ * static_cast<std::size_t>(used) * 4,
                                            cudaMemcpyDeviceToHost, stream));
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
    int differing = 0;
    for (int s = 0; s < used; ++s) {
      const Step& step = steps_[static_cast<std::size_t>(s)];
      const std::string diff =
          diff_of(host_.data() + slot_ * static_cast<std::size_t>(s), step.num_tokens, step.seed);
      if (diff.empty()) continue;
      ++differing;
      if (failures.size() < 8) {
        failures.push_back(label + " step " + std::to_string(step.step) + " (" +
                           std::to_string(step.num_tokens) + " tokens): " + diff);
      }
    }
    return differing;
  }

 private:
  struct Step {
    int num_tokens = 0;
    std::uint32_t seed = 0;
    std::int64_t step = 0;
  };

  std::string diff_of(const std::int32_t* got, int num_tokens, std::uint32_t seed) {
    const auto numel = static_cast<std::size_t>(num_tokens) * shape_.top_k;
    ids_.resize(numel);
    for (std::size_t i = 0; i < numel; ++i) {
      ids_[i] = md::test::hashed_id(seed, static_cast<std::uint32_t>(i), shape_.num_experts);
    }
    md::align_reference(ids_, shape_, nullptr, want_, counts_);
    auto first_diff = [](const char* name, const std::vector<std::int32_t>& want,
                         const std::int32_t* have) -> std::string {
      for (std::size_t i = 0; i < want.size(); ++i) {
        if (want[i] != have[i]) {
          return std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(have[i]) +
                 ", expected " + std::to_string(want[i]);
        }
      }
      return {};
    };
    std::string d = first_diff("sorted_token_ids", want_.sorted_token_ids, got);
    if (d.empty()) d = first_diff("expert_ids", want_.expert_ids, got + sorted_slot_);
    const std::int32_t* tail = got + sorted_slot_ + blocks_slot_;
    const std::vector<std::int32_t> want_tail{want_.num_tokens_post_pad, want_.num_invalid_ids, 0,
                                              num_tokens};
    if (d.empty()) d = first_diff("[post pad, invalid ids, clamped, count used]", want_tail, tail);
    return d;
  }

  md::AlignShape shape_;
  std::int64_t max_numel_ = 0;
  std::size_t sorted_slot_ = 0;
  std::size_t blocks_slot_ = 0;
  std::size_t slot_ = 0;
  md::DeviceBuffer<std::int32_t> ring_;
  std::vector<std::int32_t> host_;
  std::vector<Step> steps_;
  md::HostAlignResult want_;
  std::vector<std::int32_t> counts_;
  std::vector<std::int32_t> ids_;
};

// Writes hashed routing for `num_tokens` rows, runs, and records the outputs into `slot`.
void routed_step(md::DispatchStage& stage, OutputHistory& history, int slot, int num_tokens,
                 std::uint32_t seed, std::int64_t step, cudaStream_t stream) {
  const md::DispatchConfig& cfg = stage.config();
  MOE_DISPATCH_CUDA_CHECK(md::test::launch_hashed_routing(stage.input(), num_tokens * cfg.top_k,
                                                          seed, cfg.num_experts, stream));
  const md::DispatchOutputs out = stage.run(num_tokens, stream);
  history.record(slot, out, num_tokens, seed, step, stream);
}

// ---------------------------------------------------------------------------------------------
// The sticky-error child. The parent test re-executes this binary with only this test case
// selected and kStickyChildEnv naming a file; the child writes "ok" there once every check passed.
constexpr const char* kStickyChildEnv = "MOE_DISPATCH_STICKY_CHILD";
constexpr const char* kStickyChildName =
    "sticky child: the stage reports an illegal address left by another kernel";

struct ChildResult {
  bool exited = false;
  int exit_code = -1;
  int signal = 0;
  bool timed_out = false;
};

ChildResult run_self(const std::vector<std::string>& args, const std::string& extra_env,
                     std::chrono::seconds limit) {
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<std::string> argv_text{exe};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);

  const std::string name = extra_env.substr(0, extra_env.find('=') + 1);
  std::vector<std::string> env_text{extra_env};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, name.c_str(), name.size()) != 0) env_text.emplace_back(*e);
  }
  std::vector<char*> envp;
  for (std::string& e : env_text) envp.push_back(e.data());
  envp.push_back(nullptr);

  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = 0;
  ChildResult result;
  if (posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv.data(), envp.data()) != 0) {
    return result;
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  pid_t done = 0;
  while ((done = waitpid(pid, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (done == 0) {
    result.timed_out = true;
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return result;
  }
  if (WIFEXITED(status)) {
    result.exited = true;
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.signal = WTERMSIG(status);
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// One host thread's share of the concurrency test.
struct LaneReport {
  std::int64_t steps_checked = 0;
  std::int64_t steps_differing = 0;
  std::int64_t replays = 0;
  std::int64_t eager_runs = 0;
  std::vector<std::string> failures;  // first few differences, or the exception that ended the lane
};

LaneReport drive_lane(const md::DispatchConfig& cfg, int lane, int steps, int ring_slots,
                      std::latch& start) {
  LaneReport report;
  bool arrived = false;
  try {
    md::DispatchStage stage(cfg);
    const md::Stream stream = md::make_stream();
    OutputHistory history(cfg, ring_slots);
    std::mt19937 rng(static_cast<std::uint32_t>(lane + 1));
    std::uniform_int_distribution<std::size_t> pick_bucket(0, cfg.buckets.size() - 1);
    start.arrive_and_wait();  // both stages exist: from here on the lanes overlap
    arrived = true;
    const std::string label = "lane " + std::to_string(lane);
    for (int step = 0; step < steps; ++step) {
      const int slot = step % ring_slots;
      if (slot == 0) history.poison(stream.get());
      // Every bucket, and counts below it (0 included), equally often.
      const int bucket = cfg.buckets[pick_bucket(rng)];
      const int tokens = std::uniform_int_distribution<int>(0, bucket)(rng);
      const auto seed = static_cast<std::uint32_t>(lane * 1000000 + step);
      routed_step(stage, history, slot, tokens, seed, step, stream.get());
      if (slot == ring_slots - 1 || step == steps - 1) {
        report.steps_differing += history.check(slot + 1, stream.get(), label, report.failures);
        report.steps_checked += slot + 1;
      }
    }
    for (const md::BucketStats& b : stage.stats().buckets) {
      report.replays += b.replays;
      report.eager_runs += b.eager_runs;
    }
  } catch (const std::exception& e) {
    report.failures.push_back("lane " + std::to_string(lane) + " threw: " + e.what());
    if (!arrived) start.count_down();  // never leave the other lane waiting
  }
  return report;
}

// A config whose largest bucket gets the large (multi-kernel) variant: 4096 * 8 slots.
md::DispatchConfig large_config() {
  md::DispatchConfig c;
  c.num_experts = 64;
  c.top_k = 8;
  c.block_size = 16;
  c.buckets = {64, 4096};
  c.log = false;
  return c;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST_CASE("construction that cannot get its memory throws how much it needs and leaks nothing") {
  const md::Stream stream = md::make_stream();
  MOE_DISPATCH_CUDA_CHECK(cudaDeviceSynchronize());
  const std::size_t free_at_start = device_free_bytes();

  // The largest config validate() accepts: sorted_token_ids capacity at kMaxNumel, B = 1 so
  // expert_ids is as long again, plus the owned input: 192 MiB in three buffers.
  md::DispatchConfig huge;
  huge.num_experts = 8;
  huge.top_k = 1;
  huge.block_size = 1;
  huge.buckets = {static_cast<int>(md::kMaxNumel)};
  huge.log = false;
  REQUIRE_NOTHROW(md::validate(huge));
  md::DispatchConfig too_big = huge;
  too_big.buckets = {static_cast<int>(md::kMaxNumel) + 1};
  REQUIRE_THROWS_AS(md::validate(too_big), md::ConfigError);
  const md::AlignShape shape = md::shape_of(huge);
  const std::int64_t three_buffers =
      4 * (md::kMaxNumel + md::sorted_capacity(shape, md::kMaxNumel) +
           md::expert_ids_capacity(shape, md::kMaxNumel));

  std::optional<md::CudaError> error;
  std::size_t free_before = 0;
  std::size_t free_after = 0;
  cudaError_t left_behind = cudaSuccess;
  {
    constexpr std::size_t kLeave = std::size_t{16} << 20;
    const MemoryHog hog(kLeave);
    free_before = device_free_bytes();
    INFO("free with the hog in place: " << free_before << " bytes");
    REQUIRE(free_before < static_cast<std::size_t>(three_buffers) / 4);
    try {
      md::DispatchStage stage(huge);
    } catch (const md::CudaError& e) {
      error = e;
    }
    left_behind = cudaGetLastError();
    free_after = device_free_bytes();
  }

  REQUIRE_MESSAGE(error.has_value(), "constructing a 192 MiB stage in 16 MiB did not throw");
  const std::string what = error->what();
  INFO("what(): " << what);
  CHECK(error->code() == cudaErrorMemoryAllocation);
  CHECK_FALSE(error->sticky());
  CHECK(contains(what, "needs "));
  CHECK(needed_bytes_in(what) >= three_buffers);
  CHECK(names_file_and_line(what));
  CHECK(left_behind == cudaSuccess);            // the failure was not left sticky
  CHECK(free_after == free_before);             // buffers allocated before the failure freed
  CHECK(device_free_bytes() == free_at_start);  // and the hog gave everything back
  CHECK(cudaGetLastError() == cudaSuccess);

  // The device and the library are fine afterwards.
  md::DispatchStage stage(small_config());
  std::mt19937 rng(101);
  for (const int n : {0, 1, 100, 256}) {
    INFO("tokens=" << n);
    const std::string diff = run_and_compare(
        stage, md::test::make_routing(Routing::kWithInvalid, n, 2, 64, rng), stream.get());
    CHECK_MESSAGE(diff.empty(), diff);
  }
}

TEST_CASE("an invalid device id throws an ArgumentError naming the device count") {
  int devices = 0;
  MOE_DISPATCH_CUDA_CHECK(cudaGetDeviceCount(&devices));
  int current_before = -1;
  MOE_DISPATCH_CUDA_CHECK(cudaGetDevice(&current_before));
  for (const int bad : {devices, devices + 7, INT_MAX}) {
    md::DispatchConfig cfg = small_config();
    cfg.device = bad;
    INFO("device=" << bad);
    try {
      md::DispatchStage stage(cfg);
      FAIL_CHECK("no exception");
    } catch (const md::ArgumentError& e) {
      const std::string what = e.what();
      INFO("what(): " << what);
      CHECK(contains(what, "device " + std::to_string(bad)));
      CHECK(contains(what, "has " + std::to_string(devices) + " CUDA device"));
    }
  }
  // A negative ordinal is a config error (validate()), not a CUDA one.
  md::DispatchConfig negative = small_config();
  negative.device = -1;
  CHECK_THROWS_AS(md::DispatchStage{negative}, md::ConfigError);

  CHECK(cudaGetLastError() == cudaSuccess);
  int current_after = -1;
  MOE_DISPATCH_CUDA_CHECK(cudaGetDevice(&current_after));
  CHECK(current_after == current_before);
}

// Runs only in the child process started by the next test case (skipped otherwise): the illegal
// address kills this process's CUDA context.
TEST_CASE(kStickyChildName* doctest::skip()) {
  const char* marker = std::getenv(kStickyChildEnv);
  if (marker == nullptr) {
    MESSAGE("runs only as the child of the sticky-error test case");
    return;
  }
  const md::Stream stream = md::make_stream();
  md::DispatchStage stage(small_config());
  std::mt19937 rng(102);
  REQUIRE(run_and_compare(stage, md::test::make_routing(Routing::kUniform, 100, 2, 64, rng),
                          stream.get())
              .empty());

  // Someone else's kernel faults on the stage's stream; the stage must report it on its next
  // calls (whichever CUDA call first sees it), as sticky, naming the call and where it was made.
  MOE_DISPATCH_CUDA_CHECK(md::test::launch_illegal_address_write(stream.get()));
  std::optional<md::CudaError> reported;
  try {
    stage.run(100, stream.get());
    stage.read_num_tokens_post_pad(stream.get());
  } catch (const md::CudaError& e) {
    reported = e;
  }
  REQUIRE_MESSAGE(reported.has_value(), "run + read_num_tokens_post_pad after a fault succeeded");
  const std::string what = reported->what();
  INFO("what(): " << what);
  CHECK(reported->code() == cudaErrorIllegalAddress);
  CHECK(reported->sticky());
  CHECK(contains(what, "cuda"));
  CHECK(contains(what, "cudaErrorIllegalAddress"));
  CHECK(names_file_and_line(what));

  // The context is gone for good: later calls keep failing, as sticky errors.
  bool later_reported = false;
  try {
    stage.run(1, stream.get());
    stage.read_counters(stream.get());
  } catch (const md::CudaError& e) {
    later_reported = e.sticky();
  }
  CHECK(later_reported);
  bool construction_reported = false;
  try {
    md::DispatchStage another(small_config());
  } catch (const md::CudaError& e) {
    construction_reported = e.sticky();
  }
  CHECK(construction_reported);

  std::ofstream(marker) << "ok";
  // The stage and stream are destroyed on the dead context on the way out: that must not crash
  // (the parent sees the exit status).
}

TEST_CASE("a sticky error left by someone else's kernel is reported as sticky, not swallowed") {
  const std::filesystem::path marker = std::filesystem::temp_directory_path() /
                                       ("moe_dispatch_sticky_child_" + std::to_string(getpid()));
  std::filesystem::remove(marker);
  const ChildResult child =
      run_self({std::string("--test-case=") + kStickyChildName, "--no-skip=true", "--minimal=true"},
               std::string(kStickyChildEnv) + "=" + marker.string(), std::chrono::seconds(120));
  CHECK_FALSE(child.timed_out);
  CHECK_MESSAGE(child.signal == 0, "child killed by signal " << child.signal);
  CHECK(child.exited);
  CHECK_MESSAGE(child.exit_code == 0,
                "child exit code " << child.exit_code << " (its doctest output is above)");
  std::string verdict;
  std::ifstream(marker) >> verdict;
  CHECK_MESSAGE(verdict == "ok", "the child did not reach the end of its checks");
  std::filesystem::remove(marker);
}

TEST_CASE(
    "two host threads drive two stages on two streams for 100k steps each without cross-talk") {
  constexpr int kSteps = 100000;
  constexpr int kRing = 1000;
  md::DispatchConfig cfg_a = small_config();  // E 64, top_k 2, B 16, buckets 1 8 64 256
  md::DispatchConfig cfg_b;
  cfg_b.num_experts = 8;
  cfg_b.top_k = 2;
  cfg_b.block_size = 64;
  cfg_b.buckets = {16, 128};
  cfg_b.log = false;

  std::latch start(2);
  const auto begin = std::chrono::steady_clock::now();
  std::future<LaneReport> lane_a = std::async(std::launch::async, drive_lane, std::cref(cfg_a), 0,
                                              kSteps, kRing, std::ref(start));
  std::future<LaneReport> lane_b = std::async(std::launch::async, drive_lane, std::cref(cfg_b), 1,
                                              kSteps, kRing, std::ref(start));
  // A deadlock must fail the suite, not hang it: the lanes cannot be cancelled, so give up on the
  // process after a generous limit.
  const auto limit = begin + std::chrono::seconds(600);
  for (std::future<LaneReport>* f : {&lane_a, &lane_b}) {
    if (f->wait_until(limit) != std::future_status::ready) {
      std::fprintf(stderr, "two host threads: no progress after 600 s (deadlock?); aborting\n");
      std::fflush(stderr);
      std::_Exit(EXIT_FAILURE);
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  MESSAGE("two lanes of " << kSteps << " steps each took " << seconds << " s");

  int lane = 0;
  for (std::future<LaneReport>* f : {&lane_a, &lane_b}) {
    const LaneReport report = f->get();
    INFO("lane " << lane++);
    for (const std::string& failure : report.failures) FAIL_CHECK(failure);
    CHECK(report.steps_checked == kSteps);
    CHECK(report.steps_differing == 0);
    CHECK(report.replays == kSteps);
    CHECK(report.eager_runs == 0);
  }
}

TEST_CASE("a misaligned or null device count pointer is rejected and nothing is enqueued") {
  md::DispatchStage stage(small_config());
  const md::Stream stream = md::make_stream();
  md::DeviceBuffer<std::int32_t> d_count(2);
  const auto* misaligned =
      reinterpret_cast<const std::int32_t*>(reinterpret_cast<const char*>(d_count.get()) + 1);
  const std::int64_t replays = total_replays(stage);

  CHECK_THROWS_AS(stage.run_device_count(misaligned, 10, stream.get()), md::ArgumentError);
  CHECK_THROWS_AS(stage.run_device_count(nullptr, 10, stream.get()), md::ArgumentError);
  CHECK(total_replays(stage) == replays);

  cudaGraph_t raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphCreate(&raw, 0));
  const md::Graph parent(raw);
  CHECK_THROWS_AS(stage.add_to_graph_device_count(parent.get(), nullptr, 0, misaligned, 10),
                  md::ArgumentError);
  CHECK_THROWS_AS(stage.add_to_graph_device_count(parent.get(), nullptr, 0, nullptr, 10),
                  md::ArgumentError);
  std::size_t nodes = 0;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphGetNodes(parent.get(), nullptr, &nodes));
  CHECK(nodes == 0);
  CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("add_to_graph rejects null deps with num_deps above zero and counts out of range") {
  md::DispatchStage stage(small_config());
  md::DeviceBuffer<std::int32_t> d_count(1);
  cudaGraph_t raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphCreate(&raw, 0));
  const md::Graph parent(raw);

  CHECK_THROWS_AS(stage.add_to_graph(parent.get(), nullptr, 1, 10), md::ArgumentError);
  CHECK_THROWS_AS(stage.add_to_graph(parent.get(), nullptr, 3, 10), md::ArgumentError);
  CHECK_THROWS_AS(stage.add_to_graph(parent.get(), nullptr, 0, -1), md::ArgumentError);
  CHECK_THROWS_AS(stage.add_to_graph(parent.get(), nullptr, 0, 257), md::ArgumentError);
  CHECK_THROWS_AS(stage.add_to_graph(parent.get(), nullptr, 0, INT_MAX), md::ArgumentError);
  CHECK_THROWS_AS(stage.add_to_graph_device_count(parent.get(), nullptr, 2, d_count.get(), 10),
                  md::ArgumentError);
  CHECK_THROWS_AS(stage.add_to_graph_device_count(parent.get(), nullptr, 0, d_count.get(), -1),
                  md::ArgumentError);
  CHECK_THROWS_AS(stage.add_to_graph_device_count(parent.get(), nullptr, 0, d_count.get(), 257),
                  md::ArgumentError);
  CHECK_THROWS_AS(stage.add_to_graph_device_count(nullptr, nullptr, 0, d_count.get(), 10),
                  md::ArgumentError);
  try {
    stage.add_to_graph_device_count(parent.get(), nullptr, 0, d_count.get(), 300);
    FAIL_CHECK("no exception");
  } catch (const md::ArgumentError& e) {
    const std::string what = e.what();
    CHECK(contains(what, "300"));
    CHECK(contains(what, "256"));
  }
  std::size_t nodes = 0;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphGetNodes(parent.get(), nullptr, &nodes));
  CHECK(nodes == 0);
  for (const md::BucketStats& b : stage.stats().buckets) CHECK(b.child_nodes == 0);

  // The valid calls still work on the same graph afterwards.
  stage.add_to_graph(parent.get(), nullptr, 0, 10);
  stage.add_to_graph_device_count(parent.get(), nullptr, 0, d_count.get(), 10);
  MOE_DISPATCH_CUDA_CHECK(cudaGraphGetNodes(parent.get(), nullptr, &nodes));
  CHECK(nodes == 2);
}

TEST_CASE("above the capacity under the error policy nothing is half-written") {
  md::DispatchStage stage(small_config());
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(103);
  const auto ids = md::test::make_routing(Routing::kWithInvalid, 200, 2, 64, rng);
  REQUIRE(run_and_compare(stage, ids, stream.get()).empty());
  const md::DispatchOutputs out = stage.run(200, stream.get());
  const md::test::DeviceResult before = fetch(out);
  const md::StageStats stats_before = stage.stats();
  const std::int32_t post_pad = stage.read_num_tokens_post_pad(stream.get());

  for (const int n : {257, 1000, INT_MAX}) {
    INFO("tokens=" << n);
    try {
      stage.input_for(n);
      FAIL_CHECK("input_for: no exception");
    } catch (const md::ArgumentError& e) {
      const std::string what = e.what();
      CHECK(contains(what, std::to_string(n)));
      CHECK(contains(what, "256"));
    }
    CHECK_THROWS_AS(stage.run(n, stream.get()), md::ArgumentError);
  }
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  const md::test::DeviceResult after = fetch(out);
  CHECK(after.sorted_token_ids == before.sorted_token_ids);
  CHECK(after.expert_ids == before.expert_ids);
  CHECK(after.num_tokens_post_pad == before.num_tokens_post_pad);
  CHECK(std::equal(std::begin(after.counters), std::end(after.counters), before.counters));
  CHECK(stage.read_num_tokens_post_pad(stream.get()) == post_pad);
  CHECK(stage.read_counters(stream.get()).num_tokens == 200);
  const md::StageStats stats_after = stage.stats();
  CHECK(stats_after.device_allocations == stats_before.device_allocations);
  CHECK(stats_after.device_bytes == stats_before.device_bytes);
  CHECK(stats_after.overflow_runs == 0);
  CHECK(stats_after.overflow_growths == 0);
  CHECK(total_replays(stage) == 3);  // the valid runs only
}

TEST_CASE("a stream of another device is rejected with both devices named") {
  int devices = 0;
  MOE_DISPATCH_CUDA_CHECK(cudaGetDeviceCount(&devices));
  if (devices < 2) {
    MESSAGE("SKIPPED: needs two CUDA devices, this machine has " << devices);
    return;
  }
  for (const int stage_device : {0, 1}) {
    const int other = 1 - stage_device;
    md::DispatchConfig cfg = small_config();
    cfg.device = stage_device;
    md::DispatchStage stage(cfg);
    md::Stream foreign;
    {
      const md::DeviceGuard guard(other);
      foreign = md::make_stream();
    }
    md::DeviceBuffer<std::int32_t> d_count;
    {
      const md::DeviceGuard guard(stage_device);
      d_count = md::DeviceBuffer<std::int32_t>(1);
    }
    INFO("stage on device " << stage_device << ", stream on device " << other);
    int current_before = -1;
    MOE_DISPATCH_CUDA_CHECK(cudaGetDevice(&current_before));
    try {
      stage.run(5, foreign.get());
      FAIL_CHECK("no exception");
    } catch (const md::ArgumentError& e) {
      const std::string what = e.what();
      CHECK(contains(what, "device " + std::to_string(other)));
      CHECK(contains(what, "device " + std::to_string(stage_device)));
    }
    CHECK_THROWS_AS(stage.run_device_count(d_count.get(), 5, foreign.get()), md::ArgumentError);
    int current_after = -1;
    MOE_DISPATCH_CUDA_CHECK(cudaGetDevice(&current_after));
    CHECK(current_after == current_before);
    CHECK(total_replays(stage) == 0);
    // A run on the stage's own stream, called while the other device is current, leaves that
    // device current.
    md::Stream own;
    {
      const md::DeviceGuard guard(stage_device);
      own = md::make_stream();
    }
    const md::DeviceGuard caller(other);
    stage.run(5, own.get());
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(own.get()));
    int current_after_run = -1;
    MOE_DISPATCH_CUDA_CHECK(cudaGetDevice(&current_after_run));
    CHECK(current_after_run == other);
    CHECK(total_replays(stage) == 1);
  }
}

TEST_CASE(
    "ids outside [0, E) including INT_MIN and INT_MAX are skipped, counted and never "
    "written out of bounds") {
  md::DispatchConfig cfg = small_config();
  int tokens = 200;
  SUBCASE("one-kernel variant") {}
  SUBCASE("multi-kernel variant") {
    cfg = large_config();
    tokens = 4000;
  }
  SUBCASE("expert map, drop mode") { cfg.expert_map = md::split_experts(64, 1, 4); }
  SUBCASE("expert map, map-after mode, multi-kernel variant") {
    cfg = large_config();
    tokens = 4000;
    cfg.expert_map = md::split_experts(64, 2, 3, md::ExpertMapMode::kMapAfter);
  }
  CAPTURE(tokens);
  md::DispatchStage stage(cfg);
  const md::Stream stream = md::make_stream();
  std::mt19937 rng(104);
  const std::vector<std::int32_t> wild{
      INT_MIN,          INT_MAX, -1, cfg.num_experts, INT_MIN + 1, INT_MAX - 1, cfg.num_experts + 1,
      -cfg.num_experts, 1 << 30};
  for (const bool all_invalid : {false, true}) {
    CAPTURE(all_invalid);
    std::vector<std::int32_t> ids =
        md::test::make_routing(Routing::kUniform, tokens, cfg.top_k, cfg.num_experts, rng);
    if (all_invalid) {
      for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = wild[i % wild.size()];
    } else {
      // The first and last slots, and a scatter in between.
      ids.front() = INT_MIN;
      ids.back() = INT_MAX;
      std::uniform_int_distribution<std::size_t> where(0, ids.size() - 1);
      for (std::size_t i = 0; i < 40; ++i) ids[where(rng)] = wild[i % wild.size()];
    }
    std::int32_t expected_invalid = 0;
    for (const std::int32_t id : ids) expected_invalid += (id < 0 || id >= cfg.num_experts) ? 1 : 0;

    const std::string diff = run_and_compare(stage, ids, stream.get());
    CHECK_MESSAGE(diff.empty(), diff);
    const md::DeviceCounters counters = stage.read_counters(stream.get());
    CHECK(counters.invalid_ids == expected_invalid);
    CHECK(counters.count_clamped == 0);
    CHECK(counters.num_tokens == tokens);
    if (all_invalid) CHECK(stage.read_num_tokens_post_pad(stream.get()) == 0);
  }
  CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("a stage moved while work is queued keeps producing the right results") {
  const md::Stream stream = md::make_stream();
  const md::DispatchConfig cfg = small_config();
  md::DispatchConfig other_cfg = small_config();
  other_cfg.num_experts = 8;
  other_cfg.block_size = 64;
  other_cfg.buckets = {16, 128};
  OutputHistory history(cfg, 300);
  OutputHistory other_history(other_cfg, 100);
  history.poison(stream.get());
  other_history.poison(stream.get());
  std::mt19937 rng(105);
  std::uniform_int_distribution<int> count(0, 256);
  int step = 0;
  auto enqueue = [&](md::DispatchStage& stage, int steps) {
    for (int i = 0; i < steps; ++i, ++step) {
      routed_step(stage, history, step, count(rng), static_cast<std::uint32_t>(7000 + step), step,
                  stream.get());
    }
  };

  md::DispatchStage first(cfg);
  const std::int32_t* const input = first.input();
  enqueue(first, 100);
  md::DispatchStage second(std::move(first));  // move-constructed with 100 steps queued
  CHECK(second.input() == input);              // the device state did not move
  enqueue(second, 100);

  md::DispatchStage third(other_cfg);
  for (int i = 0; i < 100; ++i) {
    routed_step(third, other_history, i, i % 129, static_cast<std::uint32_t>(9000 + i), i,
                stream.get());
  }
  // Move-assigned with work of both queued: third's own state is destroyed with its runs (and the
  // copies of their outputs) still queued, so it must wait for them.
  third = std::move(second);
  CHECK(third.input() == input);
  CHECK(third.config().num_experts == 64);
  enqueue(third, 100);

  std::vector<std::string> failures;
  CHECK(history.check(300, stream.get(), "moved stage", failures) == 0);
  CHECK(other_history.check(100, stream.get(), "replaced stage", failures) == 0);
  for (const std::string& failure : failures) FAIL_CHECK(failure);
  CHECK(total_replays(third) == 300);
  CHECK(cudaGetLastError() == cudaSuccess);
}

TEST_CASE("destroying a stage with work queued neither faults nor leaks") {
  const md::Stream stream = md::make_stream();
  const md::DispatchConfig cfg = large_config();  // the small and the large variant's kernels
  {
    // Warm up: kernels loaded and graph machinery initialized before the baseline.
    md::DispatchStage warm(cfg);
    for (const int n : {10, 4000}) warm.run(n, stream.get());
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
  }
  MOE_DISPATCH_CUDA_CHECK(cudaDeviceSynchronize());
  const std::size_t baseline = device_free_bytes();

  for (int round = 0; round < 3; ++round) {
    INFO("round " << round);
    {
      md::DispatchStage doomed(cfg);
      for (int i = 0; i < 2000; ++i) {
        const int n = i % 2 == 0 ? 4096 : 37;
        MOE_DISPATCH_CUDA_CHECK(md::test::launch_hashed_routing(
            doomed.input(), n * cfg.top_k, static_cast<std::uint32_t>(i), 64, stream.get()));
        doomed.run(n, stream.get());
      }
    }  // destroyed with up to 2000 runs queued
    // The destructor waited for the queued work: the stream is idle without any sync of ours.
    CHECK(cudaStreamQuery(stream.get()) == cudaSuccess);
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(device_free_bytes() == baseline);
  }
}
