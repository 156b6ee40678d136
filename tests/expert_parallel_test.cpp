// GPU suite for ExpertParallelDispatch against the host model of all ranks (support/ep_model.hpp).
// On one GPU: the send plan (per-rank counts, rank-grouped permutation) for 1, 2, 4 and 8 ranks;
// the whole round trip of every rank with the NCCL exchanges replaced by device copies; and, with
// a 1-rank NCCL communicator, the captured dispatch and combine graphs end to end. On 2 or more
// GPUs ("multi-GPU:" cases, registered as their own CTest entry): one thread per GPU over
// ncclCommInitAll, dispatch + combine equal to the single-GPU MoE result; skipped with a message
// on fewer GPUs.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "moe_dispatch/align.hpp"
#include "moe_dispatch/config.hpp"
#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/errors.hpp"
#include "moe_dispatch/expert_parallel.hpp"
#include "support/device_check.hpp"
#include "support/ep_model.hpp"
#include "support/gpu.hpp"

extern const bool kNeedsGpu;
const bool kNeedsGpu = true;

namespace md = moe_dispatch;
using md::test::EpRankInput;
using md::test::EpShape;
using md::test::Routing;

namespace {

constexpr int kNumExperts = 16;
constexpr int kTopK = 4;
constexpr int kBlockSize = 4;
constexpr int kHiddenSize = 72;  // 18 float vectors or 9 bf16 vectors of 16 bytes per row
const std::vector<int> kBuckets = {1, 8, 32};

// --- Element encoding (hidden states and expert outputs) ---------------------------------------

std::uint16_t to_bf16(float f) {
  std::uint32_t u = 0;
  std::memcpy(&u, &f, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even (the values used are exact anyway)
  return static_cast<std::uint16_t>(u >> 16);
}

float from_bf16(std::uint16_t b) {
  const std::uint32_t u = std::uint32_t{b} << 16;
  float f = 0.0f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

std::vector<unsigned char> encode(const std::vector<float>& values, md::HiddenType type) {
  std::vector<unsigned char> bytes(values.size() * md::element_bytes(type));
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (type == md::HiddenType::kBFloat16) {
      const std::uint16_t b = to_bf16(values[i]);
      std::memcpy(bytes.data() + 2 * i, &b, 2);
    } else {
      std::memcpy(bytes.data() + 4 * i, &values[i], 4);
    }
  }
  return bytes;
}

std::vector<float> decode(const std::vector<unsigned char>& bytes, md::HiddenType type) {
  const std::size_t size = md::element_bytes(type);
  std::vector<float> values(bytes.size() / size);
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (type == md::HiddenType::kBFloat16) {
      std::uint16_t b = 0;
      std::memcpy(&b, bytes.data() + 2 * i, 2);
      values[i] = from_bf16(b);
    } else {
      std::memcpy(&values[i], bytes.data() + 4 * i, 4);
    }
  }
  return values;
}

const char* name_of(md::HiddenType type) {
  return type == md::HiddenType::kBFloat16 ? "bf16" : "float";
}

// --- Configs and inputs ---------------------------------------------------------------------

md::ExpertParallelConfig make_config(int world, int rank, md::HiddenType type,
                                     const std::optional<md::ExpertPlacement>& placement) {
  md::ExpertParallelConfig cfg;
  cfg.stage.num_experts = kNumExperts;
  cfg.stage.top_k = kTopK;
  cfg.stage.block_size = kBlockSize;
  cfg.stage.buckets = kBuckets;
  cfg.stage.log = false;
  cfg.world_size = world;
  cfg.rank = rank;
  cfg.placement = placement;
  cfg.hidden_size = kHiddenSize;
  cfg.hidden_type = type;
  return cfg;
}

// The model's shape, with the contiguous owners taken from split_experts() itself (not from the
// library's placement code under test).
EpShape model_shape(int world, const std::optional<md::ExpertPlacement>& placement) {
  EpShape s;
  s.num_experts = kNumExperts;
  s.top_k = kTopK;
  s.block_size = kBlockSize;
  s.world_size = world;
  s.hidden_size = kHiddenSize;
  if (placement) {
    s.owner = placement->owner;
    return s;
  }
  s.owner.assign(kNumExperts, 0);
  for (int r = 0; r < world; ++r) {
    const md::ExpertMap map = md::split_experts(kNumExperts, r, world);
    for (std::size_t e = 0; e < map.global_to_local.size(); ++e) {
      if (map.global_to_local[e] >= 0) s.owner[e] = r;
    }
  }
  return s;
}

md::ExpertPlacement random_placement(int world, std::mt19937& rng) {
  std::uniform_int_distribution<int> rank(0, world - 1);
  md::ExpertPlacement p;
  for (int e = 0; e < kNumExperts; ++e) p.owner.push_back(rank(rng));
  return p;
}

// Exactly representable in bf16 and float, sums included (see ep_model_test.cpp).
EpRankInput random_input(int num_tokens, Routing routing, std::mt19937& rng) {
  EpRankInput in;
  in.num_tokens = num_tokens;
  in.topk_ids = md::test::make_routing(routing, num_tokens, kTopK, kNumExperts, rng);
  std::uniform_int_distribution<int> quarter(1, 4);
  std::uniform_int_distribution<int> value(-3, 3);
  for (std::size_t i = 0; i < in.topk_ids.size(); ++i)
    in.weights.push_back(0.25f * static_cast<float>(quarter(rng)));
  for (int i = 0; i < num_tokens * kHiddenSize; ++i)
    in.hidden.push_back(static_cast<float>(value(rng)));
  return in;
}

std::vector<float> random_scales(std::mt19937& rng) {
  std::uniform_int_distribution<int> two(1, 2);
  std::vector<float> scale;
  for (int e = 0; e < kNumExperts; ++e) scale.push_back(static_cast<float>(two(rng)));
  return scale;
}

// --- Device transfers -----------------------------------------------------------------------

template <typename T>
std::vector<T> fetch(const T* device, std::size_t count) {
  std::vector<T> host(count);
  if (count > 0) {
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost));
  }
  return host;
}

std::int32_t fetch_one(const std::int32_t* device) { return fetch(device, 1)[0]; }

// The helpers below write with cudaMemcpy / cudaMemset, on the legacy default stream, which the
// object's non-blocking streams do not wait for (nor it for them): they synchronize the device
// before and after, so the phases on `stream` see their writes and they see the phases' results.
void sync_device() { MOE_DISPATCH_CUDA_CHECK(cudaDeviceSynchronize()); }

void write_input(md::ExpertParallelDispatch& ep, const EpRankInput& in) {
  sync_device();
  const md::HiddenType type = ep.config().hidden_type;
  const std::vector<unsigned char> hidden = encode(in.hidden, type);
  MOE_DISPATCH_CUDA_CHECK(
      cudaMemcpy(ep.hidden_input(), hidden.data(), hidden.size(), cudaMemcpyHostToDevice));
  MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(ep.topk_ids_input(), in.topk_ids.data(),
                                     in.topk_ids.size() * 4, cudaMemcpyHostToDevice));
  MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(ep.topk_weights_input(), in.weights.data(),
                                     in.weights.size() * 4, cudaMemcpyHostToDevice));
  sync_device();
}

// The engine's grouped GEMM, on the host: for every slot the local alignment lists (as a GEMM
// walks sorted_token_ids up to num_tokens_post_pad), output = scale[expert] * received row. Every
// other slot holds NaN, so a slot combine must skip but reads poisons the result.
void run_host_experts(md::ExpertParallelDispatch& ep, const md::EpDispatchOutputs& out,
                      const std::vector<float>& scale) {
  sync_device();
  const md::HiddenType type = ep.config().hidden_type;
  const auto rows = static_cast<std::size_t>(fetch_one(out.num_received));
  const std::size_t numel = rows * kTopK;
  const md::AlignShape shape{kNumExperts, kTopK, kBlockSize, false};
  const auto sorted =
      fetch(out.local.sorted_token_ids,
            static_cast<std::size_t>(md::sorted_capacity(shape, static_cast<std::int64_t>(numel))));
  const std::int32_t post_pad = fetch_one(out.local.num_tokens_post_pad);
  const auto ids = fetch(out.topk_ids, numel);
  const auto hidden_bytes = fetch(static_cast<const unsigned char*>(out.hidden),
                                  rows * kHiddenSize * md::element_bytes(type));
  const std::vector<float> hidden = decode(hidden_bytes, type);
  std::vector<float> expert_out(numel * kHiddenSize, std::nanf(""));
  for (std::int32_t j = 0; j < post_pad; ++j) {
    const auto slot = static_cast<std::size_t>(sorted[static_cast<std::size_t>(j)]);
    if (slot >= numel) continue;  // padding
    const std::size_t row = slot / kTopK;
    const float s = scale[static_cast<std::size_t>(ids[slot])];
    for (std::size_t h = 0; h < kHiddenSize; ++h) {
      expert_out[slot * kHiddenSize + h] = s * hidden[row * kHiddenSize + h];
    }
  }
  const std::vector<unsigned char> bytes = encode(expert_out, type);
  if (!bytes.empty()) {
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpy(ep.expert_output(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
  }
  sync_device();
}

// Marks every row of the combined output, so rows the combine must not write can be checked.
constexpr int kUntouchedByte = 0x7F;

void mark_output(md::ExpertParallelDispatch& ep) {
  sync_device();
  MOE_DISPATCH_CUDA_CHECK(cudaMemset(ep.combined_output(), kUntouchedByte,
                                     static_cast<std::size_t>(ep.max_tokens()) * kHiddenSize *
                                         md::element_bytes(ep.config().hidden_type)));
  sync_device();
}

// "" when rank's combined output equals the single-GPU MoE result for its num_tokens rows and
// the rows after them up to the bucket were not written; else the first difference.
std::string check_combined(md::ExpertParallelDispatch& ep, const EpShape& s, const EpRankInput& in,
                           const std::vector<float>& scale, int bucket) {
  sync_device();
  const md::HiddenType type = ep.config().hidden_type;
  const std::size_t row_bytes = kHiddenSize * md::element_bytes(type);
  const auto bytes = fetch(static_cast<const unsigned char*>(ep.combined_output()),
                           static_cast<std::size_t>(bucket) * row_bytes);
  const std::vector<float> got = decode(bytes, type);
  const std::vector<float> want = md::test::moe_reference(s, in, scale);
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (!(got[i] == want[i])) {
      return "combined[token " + std::to_string(i / kHiddenSize) + "][" +
             std::to_string(i % kHiddenSize) + "] = " + std::to_string(got[i]) + ", expected " +
             std::to_string(want[i]);
    }
  }
  for (std::size_t b = static_cast<std::size_t>(in.num_tokens) * row_bytes; b < bytes.size(); ++b) {
    if (bytes[b] != kUntouchedByte) {
      return "combined row " + std::to_string(b / row_bytes) + " past num_tokens " +
             std::to_string(in.num_tokens) + " was written";
    }
  }
  return {};
}

// --- All ranks on one GPU, the exchanges replaced by copies --------------------------------

void copy_chunks(std::vector<md::ExpertParallelDispatch>& ranks, bool combine_exchange) {
  sync_device();
  const int world = static_cast<int>(ranks.size());
  for (int p = 0; p < world; ++p) {
    for (int q = 0; q < world; ++q) {
      const md::EpExchangeView to =
          combine_exchange ? ranks[p].combine_exchange() : ranks[p].dispatch_exchange();
      const md::EpExchangeView from =
          combine_exchange ? ranks[q].combine_exchange() : ranks[q].dispatch_exchange();
      REQUIRE(to.chunk_bytes == from.chunk_bytes);
      MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(
          static_cast<unsigned char*>(to.recv) + static_cast<std::size_t>(q) * to.chunk_bytes,
          static_cast<const unsigned char*>(from.send) +
              static_cast<std::size_t>(p) * from.chunk_bytes,
          to.chunk_bytes, cudaMemcpyDeviceToDevice));
    }
  }
  sync_device();
}

std::string check_send_plan(md::ExpertParallelDispatch& ep, const EpShape& s,
                            const EpRankInput& in) {
  sync_device();
  const md::test::EpSendModel want = md::test::model_send(s, in);
  const md::EpPlanView plan = ep.plan();
  const auto world = static_cast<std::size_t>(s.world_size);
  if (fetch(plan.send_counts, world) != want.counts) return "send_counts differ";
  if (fetch(plan.send_offsets, world + 1) != want.offsets) return "send_offsets differ";
  if (fetch(plan.send_tokens, want.tokens.size()) != want.tokens) {
    return "send_tokens (the rank-grouped permutation) differ";
  }
  return {};
}

// Poisons everything the unpack (or the dispatch graph) writes: the received rows, their count,
// and the local alignment with its post pad and counters.
void poison_local(const md::ExpertParallelDispatch& ep, const md::EpDispatchOutputs& out) {
  sync_device();
  const auto poison = [](const void* p, std::size_t bytes) {
    MOE_DISPATCH_CUDA_CHECK(cudaMemset(const_cast<void*>(p), md::test::kPoisonByte, bytes));
  };
  const auto rows = static_cast<std::size_t>(out.max_received);
  poison(out.local.sorted_token_ids, static_cast<std::size_t>(out.local.sorted_token_ids_size) * 4);
  poison(out.local.expert_ids, static_cast<std::size_t>(out.local.expert_ids_size) * 4);
  poison(out.local.num_tokens_post_pad, 4);
  poison(out.local.counters, sizeof(md::DeviceCounters));
  poison(out.num_received, 4);
  poison(out.topk_ids, rows * kTopK * 4);
  poison(out.topk_weights, rows * kTopK * 4);
  poison(out.hidden, rows * kHiddenSize * md::element_bytes(ep.config().hidden_type));
  sync_device();
}

// One dispatch, by graph replay or phase by phase.
md::EpDispatchOutputs dispatch_step(md::ExpertParallelDispatch& ep, bool graphs, int num_tokens,
                                    int step_max, cudaStream_t stream) {
  if (graphs) return ep.dispatch(num_tokens, step_max, stream);
  ep.pack(num_tokens, step_max, stream);
  ep.exchange_dispatch(stream);
  return ep.unpack(stream);
}

// The first dispatch shows where the local outputs live; poison them and dispatch again, so the
// checks see only what the second one wrote. Every rank does the same (the exchange is collective).
md::EpDispatchOutputs poisoned_dispatch(md::ExpertParallelDispatch& ep, bool graphs, int num_tokens,
                                        int step_max, cudaStream_t stream) {
  poison_local(ep, dispatch_step(ep, graphs, num_tokens, step_max, stream));
  return dispatch_step(ep, graphs, num_tokens, step_max, stream);
}

// One combine, by graph replay or phase by phase.
void combine_step(md::ExpertParallelDispatch& ep, bool graphs, cudaStream_t stream) {
  if (graphs) {
    ep.combine(stream);
    return;
  }
  ep.reduce(stream);
  ep.exchange_combine(stream);
  ep.gather(stream);
}

std::string check_received(md::ExpertParallelDispatch& ep, const md::EpDispatchOutputs& out,
                           const EpShape& s, const std::vector<EpRankInput>& inputs, int p) {
  sync_device();
  const md::test::EpRecvModel want = md::test::model_receive(s, inputs, p);
  const auto world = static_cast<std::size_t>(s.world_size);
  if (fetch(ep.plan().recv_counts, world) != want.counts) return "recv_counts differ";
  if (fetch_one(out.num_received) != want.rows()) return "num_received differs";
  const auto rows = static_cast<std::size_t>(want.rows());
  if (fetch(out.topk_ids, rows * kTopK) != want.topk_ids) return "received topk_ids differ";
  if (fetch(out.topk_weights, rows * kTopK) != want.weights) return "received weights differ";
  const md::HiddenType type = ep.config().hidden_type;
  const auto hidden = decode(fetch(static_cast<const unsigned char*>(out.hidden),
                                   rows * kHiddenSize * md::element_bytes(type)),
                             type);
  if (hidden != want.hidden) return "received hidden rows differ";
  const md::test::DeviceResult local = md::test::copy_back(
      out.local.sorted_token_ids, static_cast<std::size_t>(out.local.sorted_token_ids_size),
      out.local.expert_ids, static_cast<std::size_t>(out.local.expert_ids_size),
      out.local.num_tokens_post_pad, reinterpret_cast<const std::int32_t*>(out.local.counters));
  const std::string diff = md::test::compare(want.align, local, want.rows());
  return diff.empty() ? diff : "local alignment: " + diff;
}

}  // namespace

TEST_CASE("pack gives per-rank send counts and a rank-grouped permutation equal to the model") {
  std::mt19937 rng(21);
  const md::Stream stream = md::make_stream();
  for (const int world : {1, 2, 4, 8}) {
    for (const bool explicit_placement : {false, true}) {
      std::optional<md::ExpertPlacement> placement;
      if (explicit_placement) placement = random_placement(world, rng);
      const EpShape s = model_shape(world, placement);
      md::ExpertParallelDispatch ep(
          make_config(world, world - 1, md::HiddenType::kFloat32, placement), nullptr);
      for (const Routing routing :
           {Routing::kUniform, Routing::kWithInvalid, Routing::kOneExpert, Routing::kZipf}) {
        for (const int n : {0, 1, 7, 8, 9, 31, 32}) {
          const EpRankInput in = random_input(n, routing, rng);
          write_input(ep, in);
          ep.pack(n, std::min(32, n + 3), stream.get());
          INFO("world=" << world << " explicit=" << explicit_placement
                        << " routing=" << md::test::to_string(routing) << " tokens=" << n);
          const std::string diff = check_send_plan(ep, s, in);
          CHECK_MESSAGE(diff.empty(), diff);
        }
      }
    }
  }
}

TEST_CASE("the round trip of all ranks on one GPU, exchanges copied, matches the model") {
  std::mt19937 rng(22);
  const md::Stream stream = md::make_stream();
  for (const md::HiddenType type : {md::HiddenType::kFloat32, md::HiddenType::kBFloat16}) {
    for (const int world : {1, 2, 4, 8}) {
      for (const bool explicit_placement : {false, true}) {
        std::optional<md::ExpertPlacement> placement;
        if (explicit_placement) placement = random_placement(world, rng);
        const EpShape s = model_shape(world, placement);
        std::vector<md::ExpertParallelDispatch> ranks;
        for (int r = 0; r < world; ++r)
          ranks.emplace_back(make_config(world, r, type, placement), nullptr);
        const std::vector<float> scale = random_scales(rng);
        for (const Routing routing : {Routing::kWithInvalid, Routing::kZipf, Routing::kOneExpert}) {
          for (const int step_max : {0, 1, 8, 20, 32}) {
            std::uniform_int_distribution<int> count(0, step_max);
            std::vector<EpRankInput> inputs;
            for (int r = 0; r < world; ++r) {
              // One rank always holds the step's largest count, as engines define it.
              inputs.push_back(random_input(r == 0 ? step_max : count(rng), routing, rng));
            }
            INFO(name_of(type) << " world=" << world << " explicit=" << explicit_placement
                               << " routing=" << md::test::to_string(routing)
                               << " step_max=" << step_max);
            for (int r = 0; r < world; ++r) {
              write_input(ranks[r], inputs[r]);
              mark_output(ranks[r]);
              ranks[r].pack(inputs[r].num_tokens, step_max, stream.get());
              const std::string plan = check_send_plan(ranks[r], s, inputs[r]);
              CHECK_MESSAGE(plan.empty(), "rank " << r << ": " << plan);
            }
            copy_chunks(ranks, false);
            std::vector<md::EpDispatchOutputs> outs;
            for (int r = 0; r < world; ++r) {
              // The first unpack shows where the local outputs live; poison them and unpack again.
              poison_local(ranks[r], ranks[r].unpack(stream.get()));
              outs.push_back(ranks[r].unpack(stream.get()));
              const std::string received = check_received(ranks[r], outs.back(), s, inputs, r);
              CHECK_MESSAGE(received.empty(), "rank " << r << ": " << received);
              run_host_experts(ranks[r], outs.back(), scale);
              ranks[r].reduce(stream.get());
            }
            copy_chunks(ranks, true);
            for (int r = 0; r < world; ++r) {
              ranks[r].gather(stream.get());
              const std::string combined =
                  check_combined(ranks[r], s, inputs[r], scale, ranks[r].bucket_for(step_max));
              CHECK_MESSAGE(combined.empty(), "rank " << r << ": " << combined);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("one rank over a 1-rank NCCL communicator: dispatch and combine graphs give the MoE") {
  const int devices[] = {0};
  std::vector<md::NcclComm> comms = md::make_local_communicators(devices);
  std::mt19937 rng(23);
  const md::Stream stream = md::make_stream();
  for (const md::HiddenType type : {md::HiddenType::kFloat32, md::HiddenType::kBFloat16}) {
    md::ExpertParallelDispatch ep(make_config(1, 0, type, std::nullopt), comms[0].get());
    const EpShape s = model_shape(1, std::nullopt);
    const std::vector<float> scale = random_scales(rng);
    // (num_tokens, step_max_tokens): every bucket, counts below the bucket, back to back.
    const std::pair<int, int> steps[] = {{0, 0},  {1, 1},   {5, 8},   {8, 8},  {9, 9},
                                         {3, 30}, {32, 32}, {20, 20}, {0, 32}, {7, 7}};
    for (const bool graphs : {true, false}) {
      for (const auto& [n, step_max] : steps) {
        const EpRankInput in = random_input(n, Routing::kWithInvalid, rng);
        write_input(ep, in);
        mark_output(ep);
        const md::EpDispatchOutputs out = poisoned_dispatch(ep, graphs, n, step_max, stream.get());
        INFO(name_of(type) << " graphs=" << graphs << " tokens=" << n << " step_max=" << step_max);
        CHECK(out.replayed == graphs);
        CHECK(out.bucket == ep.bucket_for(step_max));
        const std::string received = check_received(ep, out, s, {in}, 0);
        CHECK_MESSAGE(received.empty(), received);
        run_host_experts(ep, out, scale);
        combine_step(ep, graphs, stream.get());
        const std::string combined = check_combined(ep, s, in, scale, out.bucket);
        CHECK_MESSAGE(combined.empty(), combined);
      }
    }
    // The local stage runs only with the received count in device memory: it holds no
    // fixed-count graphs, and its one graph per bucket was retargeted once at most.
    for (const md::BucketStats& bucket : ep.local_stage().stats().buckets) {
      INFO("local bucket " << bucket.tokens);
      CHECK(bucket.fixed_count_graphs == 0);
      CHECK(bucket.parameter_updates <= 1);
    }
  }
}

TEST_CASE("dispatch and combine inside the caller's stream capture replay exactly") {
  const int devices[] = {0};
  std::vector<md::NcclComm> comms = md::make_local_communicators(devices);
  std::mt19937 rng(24);
  const md::Stream stream = md::make_stream();
  md::ExpertParallelDispatch ep(make_config(1, 0, md::HiddenType::kBFloat16, std::nullopt),
                                comms[0].get());
  const EpShape s = model_shape(1, std::nullopt);
  const std::vector<float> scale = random_scales(rng);
  const int n = 6;

  auto capture = [&](auto&& body) {
    MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
    body();
    cudaGraph_t raw = nullptr;
    MOE_DISPATCH_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &raw));
    md::Graph graph(raw);
    cudaGraphExec_t exec = nullptr;
    MOE_DISPATCH_CUDA_CHECK(cudaGraphInstantiate(&exec, graph.get(), 0));
    return md::GraphExec(exec);
  };
  md::EpDispatchOutputs out;
  const md::GraphExec dispatch_exec = capture([&] { out = ep.dispatch(n, 8, stream.get()); });
  const md::GraphExec combine_exec = capture([&] { ep.combine(stream.get()); });
  CHECK_FALSE(out.replayed);

  for (int step = 0; step < 3; ++step) {
    const EpRankInput in = random_input(n, Routing::kWithInvalid, rng);
    write_input(ep, in);
    mark_output(ep);
    poison_local(ep, out);
    MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(dispatch_exec.get(), stream.get()));
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
    const std::string received = check_received(ep, out, s, {in}, 0);
    CHECK_MESSAGE(received.empty(), received);
    run_host_experts(ep, out, scale);
    MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(combine_exec.get(), stream.get()));
    const std::string combined = check_combined(ep, s, in, scale, 8);
    CHECK_MESSAGE(combined.empty(), combined);
  }
}

TEST_CASE("bad configs, arguments and communicators are rejected with a message") {
  const md::Stream stream = md::make_stream();
  auto config = [] { return make_config(2, 0, md::HiddenType::kBFloat16, std::nullopt); };
  SUBCASE("configs") {
    md::ExpertParallelConfig c = config();
    c.stage.expert_map = md::split_experts(kNumExperts, 0, 2);
    CHECK_THROWS_AS(md::validate(c), md::ConfigError);
    c = config();
    c.world_size = 33;
    CHECK_THROWS_AS(md::validate(c), md::ConfigError);
    c = config();
    c.rank = 2;
    CHECK_THROWS_AS(md::validate(c), md::ConfigError);
    c = config();
    c.hidden_size = 12;  // 24 bytes: not a multiple of 16
    CHECK_THROWS_AS(md::validate(c), md::ConfigError);
    c = config();
    c.placement = md::ExpertPlacement{std::vector<std::int32_t>(kNumExperts, 2)};
    CHECK_THROWS_AS(md::validate(c), md::ConfigError);
    c = config();
    c.stage.overflow = md::OverflowPolicy::kEager;
    CHECK_THROWS_AS(md::validate(c), md::ConfigError);
    try {
      c = config();
      c.world_size = 0;
      md::validate(c);
      FAIL("no exception");
    } catch (const md::ConfigError& e) {
      CHECK(std::string(e.what()).find("expert_parallel.world_size") != std::string::npos);
    }
  }
  SUBCASE("arguments") {
    md::ExpertParallelDispatch ep(config(), nullptr);
    CHECK_THROWS_AS(ep.dispatch(1, 1, stream.get()), md::ArgumentError);
    CHECK_THROWS_AS(ep.combine(stream.get()), md::ArgumentError);
    CHECK_THROWS_AS(ep.exchange_dispatch(stream.get()), md::ArgumentError);
    CHECK_THROWS_AS(ep.pack(5, 3, stream.get()), md::ArgumentError);
    CHECK_THROWS_AS(ep.pack(-1, 3, stream.get()), md::ArgumentError);
    CHECK_THROWS_AS(ep.pack(1, 33, stream.get()), md::ArgumentError);
    CHECK(ep.bucket_for(33) == 0);
    CHECK(ep.bucket_for(9) == 32);
  }
  SUBCASE("a communicator of another size") {
    const int devices[] = {0};
    std::vector<md::NcclComm> comms = md::make_local_communicators(devices);
    CHECK_THROWS_AS(md::ExpertParallelDispatch(config(), comms[0].get()), md::ArgumentError);
  }
}

// --- Two or more GPUs ------------------------------------------------------------------------

namespace {

struct Step {
  int step_max = 0;
  std::vector<EpRankInput> inputs;  // per rank
};

// One rank's thread: construct (collectively), then run every step, alternating graph replays and
// eager phases; returns the first difference or error. It keeps taking part in every exchange
// after a difference, so the other ranks are never left waiting.
std::string run_rank(int world, int rank, ncclComm_t comm, md::HiddenType type,
                     const std::vector<Step>& steps, const std::vector<float>& scale) {
  std::string first;
  try {
    md::DeviceGuard guard(rank);
    md::ExpertParallelConfig cfg = make_config(world, rank, type, std::nullopt);
    cfg.stage.device = rank;
    md::ExpertParallelDispatch ep(cfg, comm);
    const EpShape s = model_shape(world, std::nullopt);
    const md::Stream stream = md::make_stream();
    for (std::size_t i = 0; i < steps.size(); ++i) {
      const EpRankInput& in = steps[i].inputs[static_cast<std::size_t>(rank)];
      write_input(ep, in);
      mark_output(ep);
      const bool graphs = i % 2 == 0;
      const md::EpDispatchOutputs out =
          poisoned_dispatch(ep, graphs, in.num_tokens, steps[i].step_max, stream.get());
      std::string diff = check_received(ep, out, s, steps[i].inputs, rank);
      run_host_experts(ep, out, scale);
      combine_step(ep, graphs, stream.get());
      if (diff.empty()) diff = check_combined(ep, s, in, scale, out.bucket);
      if (!diff.empty() && first.empty()) {
        first = "step " + std::to_string(i) + " (graphs " + std::to_string(graphs) + "): " + diff;
      }
    }
  } catch (const std::exception& e) {
    first = std::string("exception: ") + e.what();
  }
  return first;
}

}  // namespace

TEST_CASE("multi-GPU: dispatch and combine across ranks equal the single-GPU MoE result") {
  int devices = 0;
  MOE_DISPATCH_CUDA_CHECK(cudaGetDeviceCount(&devices));
  if (devices < 2) {
    MESSAGE("SKIPPED: this test needs 2 or more CUDA devices (one thread per GPU); found "
            << devices);
    return;
  }
  std::mt19937 rng(25);
  for (const int world : {2, 4}) {
    if (world > devices) {
      MESSAGE("not run for " << world << " ranks: found only " << devices << " CUDA devices");
      continue;
    }
    std::vector<int> ordinals;
    for (int d = 0; d < world; ++d) ordinals.push_back(d);
    for (const md::HiddenType type : {md::HiddenType::kBFloat16, md::HiddenType::kFloat32}) {
      std::vector<md::NcclComm> comms = md::make_local_communicators(ordinals);
      const std::vector<float> scale = random_scales(rng);
      std::vector<Step> steps;
      for (const int step_max : {0, 1, 8, 32, 5, 32, 20, 9, 32, 1}) {
        Step step;
        step.step_max = step_max;
        std::uniform_int_distribution<int> count(0, step_max);
        for (int r = 0; r < world; ++r) {
          const int n = r == static_cast<int>(steps.size()) % world ? step_max : count(rng);
          step.inputs.push_back(random_input(n, Routing::kWithInvalid, rng));
        }
        steps.push_back(std::move(step));
      }
      std::vector<std::string> errors(static_cast<std::size_t>(world));
      std::vector<std::thread> threads;
      for (int r = 0; r < world; ++r) {
        threads.emplace_back([&, r] {
          errors[static_cast<std::size_t>(r)] =
              run_rank(world, r, comms[static_cast<std::size_t>(r)].get(), type, steps, scale);
        });
      }
      for (std::thread& t : threads) t.join();
      for (int r = 0; r < world; ++r) {
        INFO(name_of(type) << " world=" << world << " rank=" << r);
        CHECK_MESSAGE(errors[static_cast<std::size_t>(r)].empty(),
                      errors[static_cast<std::size_t>(r)]);
      }
    }
  }
}
