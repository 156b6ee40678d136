#include "moe_dispatch/expert_parallel.hpp"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "kernels/ep_permute.hpp"
#include "moe_dispatch/align.hpp"
#include "moe_dispatch/align_async.hpp"
#include "runtime/graph_cache.hpp"
#include "runtime/kernel_node_update.hpp"

// Checks an ncclResult_t-returning expression; throws moe_dispatch::NcclError naming the call.
#define MOE_DISPATCH_NCCL_CHECK(expr)                                                        \
  do {                                                                                       \
    const ncclResult_t moe_dispatch_nccl_status_ = (expr);                                   \
    if (moe_dispatch_nccl_status_ != ncclSuccess) {                                          \
      throw ::moe_dispatch::NcclError(moe_dispatch_nccl_status_, #expr, __FILE__, __LINE__); \
    }                                                                                        \
  } while (false)

namespace moe_dispatch {

static_assert(kernels::kEpMaxTopK == kMaxTopK, "the reduce kernel stages top_k weights");
static_assert(kernels::kEpMaxWorldSize == kMaxWorldSize,
              "the permute kernels stage per-rank counts");

namespace {

// NCCL's text for the last error of this thread ("" when it has none).
std::string last_nccl_error() {
  const char* text = ncclGetLastError(nullptr);
  return text != nullptr ? text : "";
}

}  // namespace

NcclError::NcclError(ncclResult_t code, const char* call, const char* file, int line)
    : Error(std::string(file) + ":" + std::to_string(line) + ": " + call +
            " failed: " + ncclGetErrorString(code) + " (" + last_nccl_error() + ")"),
      code_(code) {}

namespace {

[[noreturn]] void fail(std::string_view key, const std::string& problem,
                       const std::string& allowed) {
  throw ConfigError("config: expert_parallel." + std::string(key) + ": " + problem +
                    "; allowed: " + allowed);
}

// The same config as one DispatchConfig with its expert_parallel section: the form the rules are
// written for (config.cpp).
DispatchConfig with_section(const ExpertParallelConfig& cfg) {
  DispatchConfig whole = cfg.stage;
  ExpertParallelSection& section = whole.expert_parallel.emplace();
  section.world_size = cfg.world_size;
  section.rank = cfg.rank;
  if (cfg.placement) section.placement = cfg.placement->owner;
  section.hidden_size = cfg.hidden_size;
  section.hidden_type = cfg.hidden_type;
  return whole;
}

kernels::EpElement element_of(HiddenType type) {
  return type == HiddenType::kBFloat16 ? kernels::EpElement::kBFloat16
                                       : kernels::EpElement::kFloat32;
}

// The local stage's config: this rank's expert map, and buckets of world_size * bucket rows (a
// rank receives at most one row per token of every rank).
DispatchConfig local_config(const ExpertParallelConfig& cfg, const ExpertPlacement& placement) {
  DispatchConfig local = cfg.stage;
  local.expert_map = local_expert_map(placement, cfg.rank);
  for (int& b : local.buckets) b *= cfg.world_size;
  local.capture = CaptureMode::kEager;
  local.overflow = OverflowPolicy::kError;
  // The local stage only runs with the received count in device memory (run_device_count()),
  // which never launches a fixed-count graph.
  local.fixed_count_graphs_up_to = 0;
  return local;
}

// The rank alignment: "experts" are ranks, each token row lists the ranks it goes to, B = 1.
AlignShape rank_shape(int world_size) { return AlignShape{world_size, world_size, 1, false}; }

std::string count_text(int n) { return std::to_string(n); }

}  // namespace

void disable_nvlink_multicast() {
  if (setenv("NCCL_NVLS_ENABLE", "0", 1) != 0) {
    throw Error("disable_nvlink_multicast: setenv(NCCL_NVLS_ENABLE=0) failed");
  }
}

std::vector<NcclComm> make_local_communicators(std::span<const int> devices) {
  if (devices.empty() || devices.size() > static_cast<std::size_t>(kernels::kEpMaxWorldSize)) {
    throw ArgumentError("make_local_communicators: " + std::to_string(devices.size()) +
                        " devices; allowed: 1.." + count_text(kernels::kEpMaxWorldSize));
  }
  disable_nvlink_multicast();
  std::vector<ncclComm_t> raw(devices.size(), nullptr);
  MOE_DISPATCH_NCCL_CHECK(
      ncclCommInitAll(raw.data(), static_cast<int>(devices.size()), devices.data()));
  std::vector<NcclComm> comms;
  comms.reserve(raw.size());
  for (ncclComm_t c : raw) comms.emplace_back(c);
  return comms;
}

ncclUniqueId make_unique_id() {
  ncclUniqueId id{};
  MOE_DISPATCH_NCCL_CHECK(ncclGetUniqueId(&id));
  return id;
}

NcclComm make_communicator(const ncclUniqueId& id, int world_size, int rank, int device) {
  disable_nvlink_multicast();
  DeviceGuard guard(device);
  ncclComm_t comm = nullptr;
  MOE_DISPATCH_NCCL_CHECK(ncclCommInitRank(&comm, world_size, id, rank));
  return NcclComm(comm);
}

ExpertPlacement contiguous_placement(int num_experts, int world_size) {
  ExpertPlacement placement;
  placement.owner.assign(static_cast<std::size_t>(std::max(num_experts, 0)), -1);
  for (int rank = 0; rank < world_size; ++rank) {
    const ExpertMap map = split_experts(num_experts, rank, world_size);
    for (std::size_t e = 0; e < map.global_to_local.size(); ++e) {
      if (map.global_to_local[e] >= 0) placement.owner[e] = rank;
    }
  }
  return placement;
}

ExpertMap local_expert_map(const ExpertPlacement& placement, int rank) {
  ExpertMap map;
  map.mode = ExpertMapMode::kDrop;
  map.global_to_local.assign(placement.owner.size(), -1);
  std::int32_t next = 0;
  for (std::size_t e = 0; e < placement.owner.size(); ++e) {
    if (placement.owner[e] == rank) map.global_to_local[e] = next++;
  }
  return map;
}

ExpertPlacement placement_of(const ExpertParallelConfig& cfg) {
  return cfg.placement ? *cfg.placement
                       : contiguous_placement(cfg.stage.num_experts, cfg.world_size);
}

void validate(const ExpertParallelConfig& cfg) {
  if (cfg.stage.expert_parallel) {
    fail("stage.expert_parallel", "is set",
         "empty (world_size, rank, placement, hidden_size and hidden_type are fields of "
         "ExpertParallelConfig)");
  }
  // The section spells "contiguous" as an empty list, so an empty owner list is refused here.
  if (cfg.placement && cfg.placement->owner.empty()) {
    fail("placement", "has 0 entries",
         "exactly num_experts = " + count_text(cfg.stage.num_experts) +
             " owner ranks, or no placement (contiguous)");
  }
  validate(with_section(cfg));
}

ExpertParallelConfig expert_parallel_config(const DispatchConfig& cfg) {
  if (!cfg.expert_parallel) {
    throw ConfigError(
        "config: expert_parallel: the section is missing; allowed: a config with an "
        "expert_parallel section (world_size, rank, hidden_size; see configs/default.yaml)");
  }
  const ExpertParallelSection& section = *cfg.expert_parallel;
  ExpertParallelConfig ep;
  ep.stage = cfg;
  ep.stage.expert_parallel.reset();
  ep.world_size = section.world_size;
  ep.rank = section.rank;
  if (!section.placement.empty()) ep.placement = ExpertPlacement{section.placement};
  ep.hidden_size = section.hidden_size;
  ep.hidden_type = section.hidden_type;
  validate(ep);
  return ep;
}

// Graphs of one bucket. The route kernel is the only node that reads the host count; each launch
// updates its parameters in the executable graph (affecting later launches only, so back-to-back
// launches with different counts do not race), as detail::BucketGraph does for the alignment in
// buckets without fixed-count graphs.
struct EpBucket {
  int tokens = 0;
  Graph dispatch_graph;
  GraphExec dispatch_exec;
  std::optional<detail::KernelNodeUpdate> route_update;  // of the route kernel's node
  int bound_count = 0;
  DispatchOutputs local;  // the local stage's outputs of this bucket (fixed buffers)
  Graph combine_graph;
  GraphExec combine_exec;
};

struct ExpertParallelDispatch::Impl {
  ExpertParallelConfig config;
  ExpertPlacement placement;
  ncclComm_t comm = nullptr;
  int world = 1;
  int top_k = 0;
  int max_tokens = 0;
  std::size_t row_bytes = 0;
  kernels::EpElement element = kernels::EpElement::kFloat32;
  kernels::EpChunkLayout max_chunk;
  std::size_t max_combine_chunk = 0;

  // Inputs (max_tokens rows).
  DeviceBuffer<unsigned char> in_hidden;
  DeviceBuffer<std::int32_t> in_ids;
  DeviceBuffer<float> in_weights;
  // Placement.
  DeviceBuffer<std::int32_t> owner;      // [E] rank of each expert
  DeviceBuffer<std::int32_t> local_map;  // [E] global -> local on this rank, or -1
  // Route and the rank alignment.
  DeviceBuffer<std::int32_t> step_tokens;  // [1] the count of the step (route writes it)
  DeviceBuffer<std::int32_t> rank_pairs;   // [max_tokens * world]
  DeviceBuffer<std::int32_t> pair_sorted;  // [max_tokens * world]
  DeviceBuffer<std::int32_t> pair_ranks;   // [max_tokens * world]
  DeviceBuffer<std::int32_t> pair_post_pad_and_counters;  // [4]
  DeviceBuffer<unsigned char> pair_scratch;
  // Send plan.
  DeviceBuffer<std::int32_t> send_counts;   // [world]
  DeviceBuffer<std::int32_t> send_offsets;  // [world + 1]
  DeviceBuffer<std::int32_t> send_tokens;   // [max_tokens * world]
  DeviceBuffer<std::int32_t> pair_slot;     // [max_tokens * world]
  // Dispatch exchange.
  DeviceBuffer<unsigned char> dispatch_send;  // world chunks
  DeviceBuffer<unsigned char> dispatch_recv;
  // Received rows, compact (world * max_tokens rows).
  DeviceBuffer<std::int32_t> recv_counts;   // [world]
  DeviceBuffer<std::int32_t> num_received;  // [1]
  DeviceBuffer<unsigned char> recv_hidden;
  DeviceBuffer<std::int32_t> recv_ids;  // the local stage's input
  DeviceBuffer<float> recv_weights;
  DeviceBuffer<std::int32_t> row_origin;
  // Combine.
  DeviceBuffer<unsigned char> expert_out;  // [world * max_tokens * top_k rows]
  DeviceBuffer<unsigned char> combine_send;
  DeviceBuffer<unsigned char> combine_recv;
  DeviceBuffer<unsigned char> output;  // [max_tokens rows]

  // After the buffers: it reads recv_ids, and is destroyed before them.
  std::unique_ptr<DispatchStage> local;
  Stream capture_stream;
  std::vector<EpBucket> buckets;  // after the buffers: graphs go first
  std::size_t current = 0;        // bucket of the last pack or dispatch

  EpBucket& bucket_of(int step_max_tokens) {
    const auto it = std::lower_bound(buckets.begin(), buckets.end(), step_max_tokens,
                                     [](const EpBucket& b, int n) { return b.tokens < n; });
    return *it;
  }

  int capacity() const { return buckets[current].tokens; }

  kernels::EpRouteParams route_params(int capacity_tokens, int num_tokens) const {
    kernels::EpRouteParams p;
    p.topk_ids = in_ids.get();
    p.owner = owner.get();
    p.rank_pairs = rank_pairs.get();
    p.num_tokens = step_tokens.get();
    p.host_num_tokens = num_tokens;
    p.capacity = capacity_tokens;
    p.num_experts = config.stage.num_experts;
    p.top_k = top_k;
    p.world_size = world;
    return p;
  }

  void align_by_rank(int capacity_tokens, cudaStream_t stream) const {
    AlignBuffersView view;
    view.topk_ids = rank_pairs.get();
    view.num_tokens = step_tokens.get();
    view.sorted_token_ids = pair_sorted.get();
    view.expert_ids = pair_ranks.get();
    view.num_tokens_post_pad = pair_post_pad_and_counters.get();
    view.scratch = pair_scratch.get();
    align_async(rank_shape(world), capacity_tokens, view, stream);
  }

  kernels::EpPackParams pack_params(int capacity_tokens) const {
    kernels::EpPackParams p;
    p.sorted_pairs = pair_sorted.get();
    p.pair_ranks = pair_ranks.get();
    p.num_pairs = pair_post_pad_and_counters.get();
    p.hidden = in_hidden.get();
    p.topk_ids = in_ids.get();
    p.topk_weights = in_weights.get();
    p.send = dispatch_send.get();
    p.layout = kernels::ep_dispatch_chunk(capacity_tokens, row_bytes, top_k);
    p.send_counts = send_counts.get();
    p.send_offsets = send_offsets.get();
    p.send_tokens = send_tokens.get();
    p.pair_slot = pair_slot.get();
    p.row_bytes = row_bytes;
    p.capacity = capacity_tokens;
    p.top_k = top_k;
    p.world_size = world;
    return p;
  }

  kernels::EpUnpackParams unpack_params(int capacity_tokens) const {
    kernels::EpUnpackParams p;
    p.recv = dispatch_recv.get();
    p.layout = kernels::ep_dispatch_chunk(capacity_tokens, row_bytes, top_k);
    p.hidden = recv_hidden.get();
    p.topk_ids = recv_ids.get();
    p.topk_weights = recv_weights.get();
    p.row_origin = row_origin.get();
    p.recv_counts = recv_counts.get();
    p.num_received = num_received.get();
    p.row_bytes = row_bytes;
    p.capacity = capacity_tokens;
    p.top_k = top_k;
    p.world_size = world;
    return p;
  }

  kernels::EpReduceParams reduce_params(int capacity_tokens) const {
    kernels::EpReduceParams p;
    p.expert_out = expert_out.get();
    p.topk_ids = recv_ids.get();
    p.topk_weights = recv_weights.get();
    p.local_map = local_map.get();
    p.row_origin = row_origin.get();
    p.num_received = num_received.get();
    p.send = combine_send.get();
    p.chunk_bytes = kernels::ep_combine_chunk(capacity_tokens, row_bytes);
    p.element = element;
    p.capacity = capacity_tokens;
    p.hidden_size = config.hidden_size;
    p.num_experts = config.stage.num_experts;
    p.top_k = top_k;
    p.world_size = world;
    return p;
  }

  kernels::EpGatherParams gather_params(int capacity_tokens) const {
    kernels::EpGatherParams p;
    p.recv = combine_recv.get();
    p.chunk_bytes = kernels::ep_combine_chunk(capacity_tokens, row_bytes);
    p.rank_pairs = rank_pairs.get();
    p.pair_slot = pair_slot.get();
    p.num_tokens = step_tokens.get();
    p.out = output.get();
    p.element = element;
    p.capacity = capacity_tokens;
    p.hidden_size = config.hidden_size;
    p.world_size = world;
    return p;
  }

  void require_comm(const char* what) const {
    if (comm == nullptr) {
      throw ArgumentError(std::string("ExpertParallelDispatch::") + what +
                          ": this object was built without a communicator (comm == nullptr)");
    }
  }

  // One NCCL group: chunk p of `send` to rank p, chunk q of `recv` from rank q (self included).
  // ncclGroupEnd runs even when an enqueue failed, so NCCL's group state stays balanced.
  void exchange(const unsigned char* send, unsigned char* recv, std::size_t chunk_bytes,
                cudaStream_t stream) const {
    MOE_DISPATCH_NCCL_CHECK(ncclGroupStart());
    ncclResult_t enqueued = ncclSuccess;
    const char* failed_call = nullptr;
    for (int peer = 0; peer < world; ++peer) {
      const std::size_t offset = static_cast<std::size_t>(peer) * chunk_bytes;
      enqueued = ncclSend(send + offset, chunk_bytes, ncclUint8, peer, comm, stream);
      if (enqueued != ncclSuccess) {
        failed_call = "ncclSend(send + peer * chunk_bytes, chunk_bytes, ncclUint8, peer)";
        break;
      }
      enqueued = ncclRecv(recv + offset, chunk_bytes, ncclUint8, peer, comm, stream);
      if (enqueued != ncclSuccess) {
        failed_call = "ncclRecv(recv + peer * chunk_bytes, chunk_bytes, ncclUint8, peer)";
        break;
      }
    }
    const ncclResult_t ended = ncclGroupEnd();
    if (failed_call != nullptr) throw NcclError(enqueued, failed_call, __FILE__, __LINE__);
    MOE_DISPATCH_NCCL_CHECK(ended);
  }

  void run_pack(int capacity_tokens, int num_tokens, cudaStream_t stream) const {
    MOE_DISPATCH_CUDA_CHECK(
        kernels::launch_ep_route(route_params(capacity_tokens, num_tokens), stream));
    align_by_rank(capacity_tokens, stream);
    MOE_DISPATCH_CUDA_CHECK(kernels::launch_ep_pack(pack_params(capacity_tokens), stream));
  }

  void run_exchange_dispatch(int capacity_tokens, cudaStream_t stream) const {
    exchange(dispatch_send.get(), dispatch_recv.get(),
             kernels::ep_dispatch_chunk(capacity_tokens, row_bytes, top_k).bytes, stream);
  }

  DispatchOutputs run_unpack(int capacity_tokens, cudaStream_t stream) const {
    MOE_DISPATCH_CUDA_CHECK(kernels::launch_ep_unpack(unpack_params(capacity_tokens), stream));
    return local->run_device_count(num_received.get(), world * capacity_tokens, stream);
  }

  void run_reduce(int capacity_tokens, cudaStream_t stream) const {
    MOE_DISPATCH_CUDA_CHECK(kernels::launch_ep_reduce(reduce_params(capacity_tokens), stream));
  }

  void run_exchange_combine(int capacity_tokens, cudaStream_t stream) const {
    exchange(combine_send.get(), combine_recv.get(),
             kernels::ep_combine_chunk(capacity_tokens, row_bytes), stream);
  }

  void run_gather(int capacity_tokens, cudaStream_t stream) const {
    MOE_DISPATCH_CUDA_CHECK(kernels::launch_ep_gather(gather_params(capacity_tokens), stream));
  }

  EpDispatchOutputs outputs(const DispatchOutputs& local_out, int capacity_tokens,
                            bool replayed) const {
    EpDispatchOutputs out;
    out.local = local_out;
    out.hidden = recv_hidden.get();
    out.topk_ids = recv_ids.get();
    out.topk_weights = recv_weights.get();
    out.num_received = num_received.get();
    out.max_received = world * capacity_tokens;
    out.bucket = capacity_tokens;
    out.replayed = replayed;
    return out;
  }

  // Captures `body` on the capture stream (thread-local mode: other ranks' threads keep working).
  template <typename Body>
  Graph capture(Body&& body) {
    cudaStream_t s = capture_stream.get();
    MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    try {
      body(s);
    } catch (...) {
      cudaGraph_t broken = nullptr;
      cudaStreamEndCapture(s, &broken);
      Graph released(broken);
      cudaGetLastError();  // the invalidated capture's error belongs to the exception in flight
      throw;
    }
    cudaGraph_t captured = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(s, &captured);
    Graph graph(captured);
    if (ended != cudaSuccess) {
      detail::throw_cuda_error(ended, "cudaStreamEndCapture(capture_stream, &captured)", __FILE__,
                               __LINE__);
    }
    return graph;
  }

  void capture_bucket(EpBucket& b) {
    const int cap = b.tokens;
    cudaGraphNode_t route_node = nullptr;
    b.dispatch_graph = capture([&](cudaStream_t s) {
      MOE_DISPATCH_CUDA_CHECK(kernels::launch_ep_route(route_params(cap, 0), s));
      // The route kernel is the capture's only frontier node right after its launch.
      cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
      const cudaGraphNode_t* frontier = nullptr;
      std::size_t frontier_size = 0;
      MOE_DISPATCH_CUDA_CHECK(cudaStreamGetCaptureInfo(s, &status, nullptr, nullptr, &frontier,
                                                       nullptr, &frontier_size));
      if (status != cudaStreamCaptureStatusActive || frontier_size != 1) {
        throw Error("ExpertParallelDispatch: capture of bucket " + count_text(cap) +
                    ": expected the route kernel as the only node after its launch, found " +
                    std::to_string(frontier_size));
      }
      route_node = frontier[0];
      align_by_rank(cap, s);
      MOE_DISPATCH_CUDA_CHECK(kernels::launch_ep_pack(pack_params(cap), s));
      run_exchange_dispatch(cap, s);
      b.local = run_unpack(cap, s);
    });
    b.route_update.emplace(route_node);  // the node's parameters read outside the capture
    b.bound_count = 0;
    b.dispatch_exec = detail::instantiate_uploaded(b.dispatch_graph.get(), capture_stream.get());
    b.combine_graph = capture([&](cudaStream_t s) {
      run_reduce(cap, s);
      run_exchange_combine(cap, s);
      run_gather(cap, s);
    });
    b.combine_exec = detail::instantiate_uploaded(b.combine_graph.get(), capture_stream.get());
  }

  // Sets the count the route node of the bucket's executable graph uses, unless it holds it.
  void bind(EpBucket& b, int num_tokens) {
    if (num_tokens == b.bound_count) return;
    kernels::EpRouteParams args = route_params(b.tokens, num_tokens);
    void* arg_pointers[1] = {&args};
    b.route_update->set_args(b.dispatch_exec.get(), arg_pointers);
    b.bound_count = num_tokens;
  }

  bool caller_capturing(cudaStream_t stream) const {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    MOE_DISPATCH_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
    return status == cudaStreamCaptureStatusActive;
  }

  // The stream's device must be the object's (not checkable on a capturing stream).
  void check_stream(cudaStream_t stream, bool capturing) const {
    if (capturing) return;
    int device = -1;
    MOE_DISPATCH_CUDA_CHECK(cudaStreamGetDevice(stream, &device));
    if (device != config.stage.device) {
      throw ArgumentError("ExpertParallelDispatch: stream belongs to device " + count_text(device) +
                          ", the object lives on device " + count_text(config.stage.device));
    }
  }

  void check_counts(const char* what, int num_tokens, int step_max_tokens) const {
    if (num_tokens < 0 || num_tokens > step_max_tokens || step_max_tokens > max_tokens) {
      throw ArgumentError(
          std::string("ExpertParallelDispatch::") + what + ": num_tokens " +
          count_text(num_tokens) + " and step_max_tokens " + count_text(step_max_tokens) +
          " must satisfy 0 <= num_tokens <= step_max_tokens <= " + count_text(max_tokens) +
          " (largest bucket)");
    }
  }

  void allocate(const ExpertParallelConfig& cfg) {
    const auto rows = static_cast<std::size_t>(max_tokens);
    const auto w = static_cast<std::size_t>(world);
    const auto k = static_cast<std::size_t>(top_k);
    const auto experts = static_cast<std::size_t>(cfg.stage.num_experts);
    in_hidden = DeviceBuffer<unsigned char>(rows * row_bytes);
    in_ids = DeviceBuffer<std::int32_t>(rows * k);
    in_weights = DeviceBuffer<float>(rows * k);
    owner = DeviceBuffer<std::int32_t>(experts);
    local_map = DeviceBuffer<std::int32_t>(experts);
    step_tokens = DeviceBuffer<std::int32_t>(1);
    rank_pairs = DeviceBuffer<std::int32_t>(rows * w);
    const AlignShape shape = rank_shape(world);
    const std::int64_t pairs = std::int64_t{max_tokens} * world;
    pair_sorted =
        DeviceBuffer<std::int32_t>(static_cast<std::size_t>(sorted_capacity(shape, pairs)));
    pair_ranks =
        DeviceBuffer<std::int32_t>(static_cast<std::size_t>(expert_ids_capacity(shape, pairs)));
    pair_post_pad_and_counters = DeviceBuffer<std::int32_t>(4);
    std::size_t scratch = 0;
    for (const int b : cfg.stage.buckets)
      scratch = std::max(scratch, align_scratch_bytes(shape, b));
    pair_scratch = DeviceBuffer<unsigned char>(scratch);
    send_counts = DeviceBuffer<std::int32_t>(w);
    send_offsets = DeviceBuffer<std::int32_t>(w + 1);
    send_tokens = DeviceBuffer<std::int32_t>(rows * w);
    pair_slot = DeviceBuffer<std::int32_t>(rows * w);
    dispatch_send = DeviceBuffer<unsigned char>(w * max_chunk.bytes);
    dispatch_recv = DeviceBuffer<unsigned char>(w * max_chunk.bytes);
    recv_counts = DeviceBuffer<std::int32_t>(w);
    num_received = DeviceBuffer<std::int32_t>(1);
    recv_hidden = DeviceBuffer<unsigned char>(w * rows * row_bytes);
    recv_ids = DeviceBuffer<std::int32_t>(w * rows * k);
    recv_weights = DeviceBuffer<float>(w * rows * k);
    row_origin = DeviceBuffer<std::int32_t>(w * rows);
    expert_out = DeviceBuffer<unsigned char>(w * rows * k * row_bytes);
    combine_send = DeviceBuffer<unsigned char>(w * max_combine_chunk);
    combine_recv = DeviceBuffer<unsigned char>(w * max_combine_chunk);
    output = DeviceBuffer<unsigned char>(rows * row_bytes);
  }

  // Every buffer starts written: kernels and the alignment read input rows up to the capacity
  // before the count arrives, the warm-up exchange sends whole chunks, and -1 ids mean "no expert".
  void initialize() {
    auto clear = [](auto& buffer, int byte) {
      if (buffer.size() > 0)
        MOE_DISPATCH_CUDA_CHECK(cudaMemset(buffer.get(), byte, buffer.bytes()));
    };
    clear(in_hidden, 0);
    clear(in_ids, 0xFF);
    clear(in_weights, 0);
    clear(step_tokens, 0);
    clear(rank_pairs, 0xFF);
    clear(pair_sorted, 0);
    clear(pair_ranks, 0xFF);
    clear(pair_post_pad_and_counters, 0);
    clear(send_counts, 0);
    clear(send_offsets, 0);
    clear(send_tokens, 0);
    clear(pair_slot, 0);
    clear(dispatch_send, 0);
    clear(dispatch_recv, 0);
    clear(recv_counts, 0);
    clear(num_received, 0);
    clear(recv_hidden, 0);
    clear(recv_ids, 0xFF);
    clear(recv_weights, 0);
    clear(row_origin, 0);
    clear(expert_out, 0);
    clear(combine_send, 0);
    clear(combine_recv, 0);
    clear(output, 0);
    MOE_DISPATCH_CUDA_CHECK(
        cudaMemcpy(owner.get(), placement.owner.data(), owner.bytes(), cudaMemcpyHostToDevice));
    const ExpertMap map = local_expert_map(placement, config.rank);
    MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(local_map.get(), map.global_to_local.data(),
                                       local_map.bytes(), cudaMemcpyHostToDevice));
    // These ran on the legacy default stream, which the non-blocking streams of later work do
    // not wait for.
    MOE_DISPATCH_CUDA_CHECK(cudaDeviceSynchronize());
  }

  // The communicator must be rank config.rank of config.world_size ranks, on config's device.
  void check_comm() const {
    int count = 0;
    int user_rank = 0;
    int device = 0;
    MOE_DISPATCH_NCCL_CHECK(ncclCommCount(comm, &count));
    MOE_DISPATCH_NCCL_CHECK(ncclCommUserRank(comm, &user_rank));
    MOE_DISPATCH_NCCL_CHECK(ncclCommCuDevice(comm, &device));
    if (count != world || user_rank != config.rank || device != config.stage.device) {
      throw ArgumentError("ExpertParallelDispatch: the communicator is rank " +
                          count_text(user_rank) + " of " + count_text(count) + " on device " +
                          count_text(device) + "; the config asks for rank " +
                          count_text(config.rank) + " of " + count_text(world) + " on device " +
                          count_text(config.stage.device));
    }
  }
};

ExpertParallelDispatch::ExpertParallelDispatch(const ExpertParallelConfig& config, ncclComm_t comm)
    : impl_(std::make_unique<Impl>()) {
  validate(config);
  Impl& s = *impl_;
  s.config = config;
  s.placement = placement_of(config);
  s.comm = comm;
  s.world = config.world_size;
  s.top_k = config.stage.top_k;
  s.max_tokens = config.stage.max_tokens();
  s.row_bytes = element_bytes(config.hidden_type) * static_cast<std::size_t>(config.hidden_size);
  s.element = element_of(config.hidden_type);
  s.max_chunk = kernels::ep_dispatch_chunk(s.max_tokens, s.row_bytes, s.top_k);
  s.max_combine_chunk = kernels::ep_combine_chunk(s.max_tokens, s.row_bytes);

  int device_count = 0;
  MOE_DISPATCH_CUDA_CHECK(cudaGetDeviceCount(&device_count));
  if (config.stage.device >= device_count) {
    throw ArgumentError("ExpertParallelDispatch: device " + count_text(config.stage.device) +
                        " does not exist; this machine has " + count_text(device_count) +
                        " CUDA device(s)");
  }
  DeviceGuard guard(config.stage.device);
  if (comm != nullptr) s.check_comm();
  s.allocate(config);
  s.initialize();
  s.local = std::make_unique<DispatchStage>(local_config(config, s.placement), s.recv_ids.get());
  s.capture_stream = make_stream();
  for (const int tokens : config.stage.buckets) {
    EpBucket b;
    b.tokens = tokens;
    s.buckets.push_back(std::move(b));
  }
  if (comm != nullptr) {
    // NCCL connects peers on their first send/receive; do that eagerly, outside any capture.
    const int largest = s.max_tokens;
    s.run_exchange_dispatch(largest, s.capture_stream.get());
    s.run_exchange_combine(largest, s.capture_stream.get());
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(s.capture_stream.get()));
    for (EpBucket& b : s.buckets) s.capture_bucket(b);
  }
  MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(s.capture_stream.get()));
}

ExpertParallelDispatch::~ExpertParallelDispatch() {
  if (!impl_) return;
  // Queued work may still use the buffers: let it finish before freeing.
  int previous = 0;
  if (cudaGetDevice(&previous) == cudaSuccess) {
    cudaSetDevice(impl_->config.stage.device);
    cudaDeviceSynchronize();
    impl_.reset();
    cudaSetDevice(previous);
  }
}

ExpertParallelDispatch::ExpertParallelDispatch(ExpertParallelDispatch&&) noexcept = default;
ExpertParallelDispatch& ExpertParallelDispatch::operator=(ExpertParallelDispatch&& other) noexcept {
  if (this != &other) {
    ExpertParallelDispatch dying(std::move(*this));
    impl_ = std::move(other.impl_);
  }
  return *this;
}

const ExpertParallelConfig& ExpertParallelDispatch::config() const { return impl_->config; }
int ExpertParallelDispatch::max_tokens() const { return impl_->max_tokens; }
const DispatchStage& ExpertParallelDispatch::local_stage() const { return *impl_->local; }

int ExpertParallelDispatch::bucket_for(int step_max_tokens) const {
  if (step_max_tokens > impl_->max_tokens) return 0;
  const auto& b = impl_->config.stage.buckets;
  return *std::lower_bound(b.begin(), b.end(), std::max(step_max_tokens, 0));
}

void* ExpertParallelDispatch::hidden_input() { return impl_->in_hidden.get(); }
std::int32_t* ExpertParallelDispatch::topk_ids_input() { return impl_->in_ids.get(); }
float* ExpertParallelDispatch::topk_weights_input() { return impl_->in_weights.get(); }
void* ExpertParallelDispatch::expert_output() { return impl_->expert_out.get(); }
void* ExpertParallelDispatch::combined_output() { return impl_->output.get(); }

EpDispatchOutputs ExpertParallelDispatch::dispatch(int num_tokens, int step_max_tokens,
                                                   cudaStream_t stream) {
  Impl& s = *impl_;
  s.check_counts("dispatch", num_tokens, step_max_tokens);
  s.require_comm("dispatch");
  DeviceGuard guard(s.config.stage.device);
  const bool capturing = s.caller_capturing(stream);
  s.check_stream(stream, capturing);
  EpBucket& b = s.bucket_of(step_max_tokens);
  // The bucket becomes the current one (which the later calls of the step use) once its dispatch
  // is enqueued: after a throw they keep the last step's.
  const auto index = static_cast<std::size_t>(&b - s.buckets.data());
  if (capturing) {
    s.run_pack(b.tokens, num_tokens, stream);
    s.run_exchange_dispatch(b.tokens, stream);
    const EpDispatchOutputs out = s.outputs(s.run_unpack(b.tokens, stream), b.tokens, false);
    s.current = index;
    return out;
  }
  s.bind(b, num_tokens);
  MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(b.dispatch_exec.get(), stream));
  s.current = index;
  return s.outputs(b.local, b.tokens, true);
}

void ExpertParallelDispatch::combine(cudaStream_t stream) {
  Impl& s = *impl_;
  s.require_comm("combine");
  DeviceGuard guard(s.config.stage.device);
  const bool capturing = s.caller_capturing(stream);
  s.check_stream(stream, capturing);
  EpBucket& b = s.buckets[s.current];
  if (capturing) {
    s.run_reduce(b.tokens, stream);
    s.run_exchange_combine(b.tokens, stream);
    s.run_gather(b.tokens, stream);
    return;
  }
  MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(b.combine_exec.get(), stream));
}

void ExpertParallelDispatch::pack(int num_tokens, int step_max_tokens, cudaStream_t stream) {
  Impl& s = *impl_;
  s.check_counts("pack", num_tokens, step_max_tokens);
  DeviceGuard guard(s.config.stage.device);
  s.check_stream(stream, s.caller_capturing(stream));
  EpBucket& b = s.bucket_of(step_max_tokens);
  s.run_pack(b.tokens, num_tokens, stream);
  s.current = static_cast<std::size_t>(&b - s.buckets.data());  // once the pack is enqueued
}

void ExpertParallelDispatch::exchange_dispatch(cudaStream_t stream) {
  Impl& s = *impl_;
  s.require_comm("exchange_dispatch");
  DeviceGuard guard(s.config.stage.device);
  s.check_stream(stream, s.caller_capturing(stream));
  s.run_exchange_dispatch(s.capacity(), stream);
}

EpDispatchOutputs ExpertParallelDispatch::unpack(cudaStream_t stream) {
  Impl& s = *impl_;
  DeviceGuard guard(s.config.stage.device);
  s.check_stream(stream, s.caller_capturing(stream));
  return s.outputs(s.run_unpack(s.capacity(), stream), s.capacity(), false);
}

void ExpertParallelDispatch::reduce(cudaStream_t stream) {
  Impl& s = *impl_;
  DeviceGuard guard(s.config.stage.device);
  s.check_stream(stream, s.caller_capturing(stream));
  s.run_reduce(s.capacity(), stream);
}

void ExpertParallelDispatch::exchange_combine(cudaStream_t stream) {
  Impl& s = *impl_;
  s.require_comm("exchange_combine");
  DeviceGuard guard(s.config.stage.device);
  s.check_stream(stream, s.caller_capturing(stream));
  s.run_exchange_combine(s.capacity(), stream);
}

void ExpertParallelDispatch::gather(cudaStream_t stream) {
  Impl& s = *impl_;
  DeviceGuard guard(s.config.stage.device);
  s.check_stream(stream, s.caller_capturing(stream));
  s.run_gather(s.capacity(), stream);
}

EpPlanView ExpertParallelDispatch::plan() const {
  const Impl& s = *impl_;
  EpPlanView v;
  v.send_counts = s.send_counts.get();
  v.send_offsets = s.send_offsets.get();
  v.send_tokens = s.send_tokens.get();
  v.recv_counts = s.recv_counts.get();
  v.num_received = s.num_received.get();
  v.bucket = s.capacity();
  return v;
}

EpExchangeView ExpertParallelDispatch::dispatch_exchange() const {
  const Impl& s = *impl_;
  EpExchangeView v;
  v.send = s.dispatch_send.get();
  v.recv = s.dispatch_recv.get();
  v.chunk_bytes = kernels::ep_dispatch_chunk(s.capacity(), s.row_bytes, s.top_k).bytes;
  v.chunks = s.world;
  return v;
}

EpExchangeView ExpertParallelDispatch::combine_exchange() const {
  const Impl& s = *impl_;
  EpExchangeView v;
  v.send = s.combine_send.get();
  v.recv = s.combine_recv.get();
  v.chunk_bytes = kernels::ep_combine_chunk(s.capacity(), s.row_bytes);
  v.chunks = s.world;
  return v;
}

}  // namespace moe_dispatch
