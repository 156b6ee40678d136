// Expert parallelism over NCCL (docs/EXPERT_PARALLEL.md): world_size ranks, one GPU each, each
// owning a set of the experts. dispatch() sends every token's hidden state and routing row once to
// each rank that owns at least one of its experts and aligns the received rows with a local
// DispatchStage; combine() sends the weighted sums of the local expert outputs back and adds them
// up in token order. Part of the separate library moe_dispatch::ep (built when NCCL is found);
// the core library does not depend on NCCL.
//
// Contract
// - Everything but the two exchanges is a function of this rank's routing (pack, unpack, reduce,
//   gather, below), so a single GPU can check it against a host model of all ranks; the exchanges
//   are one NCCL group each (ncclSend/ncclRecv per peer, self included).
// - Transfers have a fixed size per bucket: NCCL's host API takes host counts, and a captured graph
//   freezes them, so each peer's chunk holds `bucket` rows. The true row count travels in the
//   chunk's header and is read on the device (the count exchange happens on the device, in the
//   same NCCL group as the payload); the receiver compacts the valid rows.
// - Buckets count tokens per rank. Every rank of a step must use the same bucket, so every call
//   takes `step_max_tokens`: the largest num_tokens over the ranks of the step (engines compute
//   it for data-parallel padding). A mismatch makes NCCL transfers of different sizes: an error
//   or a hang.
// - Construction is collective when a communicator is given: every rank constructs its object at
//   the same time with the same config apart from `rank` (it runs one eager exchange to connect the
//   peers, then captures one dispatch graph and one combine graph per bucket, each holding NCCL
//   operations). A failed capture throws (a fallback on one rank only would break the collective).
// - dispatch() and combine() replay those graphs. Inside the caller's stream capture they enqueue
//   the phases instead, which the caller's graph captures (count fixed to the value passed).
// - Lifetime and threads: as DispatchStage (one host thread at a time, stream-ordered, outputs
//   valid until the next dispatch). The communicator is borrowed: it must outlive the object.
// - Errors: ConfigError for a bad config, ArgumentError for bad arguments, CudaError and NcclError
//   for failed calls (messages name the call, file and line).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "moe_dispatch/config.hpp"
#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/dispatch_stage.hpp"
#include "moe_dispatch/errors.hpp"

namespace moe_dispatch {

// An NCCL call failed. Carries the result code; the message names the call, the file and line,
// and NCCL's last error text.
class NcclError : public Error {
 public:
  NcclError(ncclResult_t code, const char* call, const char* file, int line);
  ncclResult_t code() const noexcept { return code_; }

 private:
  ncclResult_t code_;
};

struct NcclCommTraits {
  using Handle = ncclComm_t;
  static void destroy(Handle h) noexcept { ncclCommDestroy(h); }
};
// An owned communicator (ncclCommDestroy on release).
using NcclComm = UniqueHandle<NcclCommTraits>;

// Keeps NVLink multicast (NVLS) off for the communicators this process creates afterwards: sets
// NCCL_NVLS_ENABLE=0 in the process environment (overriding a value already there). The helpers
// below call it; call it yourself before creating communicators another way.
void disable_nvlink_multicast();

// One communicator per device of this process (ncclCommInitAll): element i is rank i on
// devices[i]. For one thread per GPU in one process.
std::vector<NcclComm> make_local_communicators(std::span<const int> devices);

// A new unique id (ncclGetUniqueId), made by one process and shared with the others.
ncclUniqueId make_unique_id();

// This process's rank of a communicator spanning processes (ncclCommInitRank) on `device`.
NcclComm make_communicator(const ncclUniqueId& id, int world_size, int rank, int device);

// HiddenType and element_bytes() are in config.hpp (the YAML section expert_parallel names them).

// Which rank owns each global expert.
struct ExpertPlacement {
  std::vector<std::int32_t> owner;  // [num_experts], each in [0, world_size)
};

// Contiguous ranges, as split_experts(): the first (E % world_size) ranks own one expert more.
// Throws ConfigError when world_size is outside [1, num_experts].
ExpertPlacement contiguous_placement(int num_experts, int world_size);

// The expert map of `rank` (ExpertMapMode::kDrop): its experts get local ids 0, 1, ... in
// ascending global order; the others map to -1. Equals split_experts() for a contiguous placement.
ExpertMap local_expert_map(const ExpertPlacement& placement, int rank);

// The fields of ExpertParallelSection (config.hpp), with the placement as an ExpertPlacement.
struct ExpertParallelConfig {
  // The model shape and runtime options: num_experts, top_k, block_size, pad_sorted_ids, device,
  // log; buckets count tokens per rank. expert_map and expert_parallel must be empty (the fields
  // below decide them) and overflow must be kError. The local DispatchStage gets buckets
  // world_size * bucket (the most rows a rank can receive) and is always captured at construction.
  DispatchConfig stage;
  int world_size = 1;  // 1..kMaxWorldSize
  int rank = 0;
  std::optional<ExpertPlacement> placement;  // empty: contiguous_placement(E, world_size)
  int hidden_size = 0;  // elements per hidden row; a row must be a multiple of 16 bytes
  HiddenType hidden_type = HiddenType::kBFloat16;
};

// Throws ConfigError when cfg breaks a rule: the rules of validate(const DispatchConfig&) for the
// stage with this expert_parallel section ("config: expert_parallel.<key>: ...", "config:
// overflow: ...", ...), written once in config.cpp.
void validate(const ExpertParallelConfig& cfg);

// The config of this rank from a loaded DispatchConfig and its expert_parallel section (stage is
// cfg without the section; an empty section placement stays empty, i.e. contiguous). Validates.
// Throws ConfigError ("config: expert_parallel: ...") when cfg has no section or breaks a rule.
ExpertParallelConfig expert_parallel_config(const DispatchConfig& cfg);

// cfg.placement, or the contiguous placement when it is empty.
ExpertPlacement placement_of(const ExpertParallelConfig& cfg);

// What the engine's expert GEMM needs on this rank after a dispatch. Device pointers into the
// object's buffers, valid until the next dispatch. Received rows are ordered by source rank, then
// by the source's token order.
struct EpDispatchOutputs {
  // The local alignment of the received rows (slot i = row * top_k + k; expert_ids hold local ids;
  // slots of other ranks' experts are dropped). Its num_tokens is max_received, an upper bound.
  DispatchOutputs local;
  const void* hidden = nullptr;                // [rows, hidden_size] received hidden states
  const std::int32_t* topk_ids = nullptr;      // [rows, top_k] global expert ids
  const float* topk_weights = nullptr;         // [rows, top_k]
  const std::int32_t* num_received = nullptr;  // [1] rows received (device)
  int max_received = 0;   // world_size * bucket: the capacity of the row buffers for this bucket
  int bucket = 0;         // tokens per rank of the bucket used
  bool replayed = false;  // true when a captured graph ran, false for eager phases
};

// The send plan of the last pack and the receive counts of the last unpack (device pointers; for
// inspection and tests, the exchanges do not need them).
struct EpPlanView {
  const std::int32_t* send_counts = nullptr;   // [world_size] tokens sent to each rank
  const std::int32_t* send_offsets = nullptr;  // [world_size + 1] exclusive prefix of send_counts
  // [send_offsets[world_size]] the token at each position: grouped by destination rank, tokens
  // ascending within a rank (a stable permutation of the (token, rank) pairs).
  const std::int32_t* send_tokens = nullptr;
  const std::int32_t* recv_counts = nullptr;   // [world_size] rows received from each rank
  const std::int32_t* num_received = nullptr;  // [1] sum of recv_counts
  int bucket = 0;
};

// One exchange's buffers for the current bucket: chunk p of `send` goes to rank p, chunk q of
// `recv` comes from rank q; chunks are chunk_bytes apart. Tests without a communicator move the
// chunks themselves (cudaMemcpy) to stand in for NCCL.
struct EpExchangeView {
  const void* send = nullptr;
  void* recv = nullptr;
  std::size_t chunk_bytes = 0;
  int chunks = 0;
};

class ExpertParallelDispatch {
 public:
  // Allocates on config.stage.device and builds the local DispatchStage. With a communicator
  // (rank config.rank of config.world_size ranks, on that device; checked), connects the peers
  // and captures the per-bucket graphs: collective, see above. With comm == nullptr the object
  // has no exchange: the phases other than the exchanges work (single-GPU tests of all ranks),
  // dispatch(), combine() and the exchange phases throw ArgumentError.
  ExpertParallelDispatch(const ExpertParallelConfig& config, ncclComm_t comm);
  ~ExpertParallelDispatch();
  ExpertParallelDispatch(ExpertParallelDispatch&&) noexcept;
  ExpertParallelDispatch& operator=(ExpertParallelDispatch&&) noexcept;
  ExpertParallelDispatch(const ExpertParallelDispatch&) = delete;
  ExpertParallelDispatch& operator=(const ExpertParallelDispatch&) = delete;

  const ExpertParallelConfig& config() const;
  int max_tokens() const;  // the largest bucket (tokens per rank)
  // The smallest bucket >= step_max_tokens; 0 above max_tokens().
  int bucket_for(int step_max_tokens) const;
  const DispatchStage& local_stage() const;

  // Persistent inputs, max_tokens() rows each, row-major by token: hidden states (hidden_type),
  // global expert ids and routing weights.
  void* hidden_input();
  std::int32_t* topk_ids_input();
  float* topk_weights_input();
  // The engine's expert outputs for the received slots: world_size * max_tokens() * top_k rows
  // of hidden_size elements (hidden_type); row i is slot i = received row * top_k + k, as vLLM's
  // fused_moe writes them. combine() reads only the slots of this rank's experts.
  void* expert_output();
  // The combined result of the last combine: max_tokens() rows of hidden_size elements; row t of
  // the first num_tokens rows is sum_k w[t,k] * expert_output of (t, k), zero for a token none of
  // whose ids is valid. Rows past num_tokens are not written.
  void* combined_output();

  // Whole operations, replaying the bucket's graphs. num_tokens: this rank's rows of the inputs
  // (0..step_max_tokens); step_max_tokens: the same on every rank (see above). combine() uses the
  // bucket and routing of the last dispatch.
  EpDispatchOutputs dispatch(int num_tokens, int step_max_tokens, cudaStream_t stream);
  void combine(cudaStream_t stream);

  // The same operations as eager phases: dispatch = pack, exchange_dispatch, unpack; combine =
  // reduce, exchange_combine, gather. pack() picks the bucket the later phases use.
  void pack(int num_tokens, int step_max_tokens, cudaStream_t stream);
  void exchange_dispatch(cudaStream_t stream);
  EpDispatchOutputs unpack(cudaStream_t stream);
  void reduce(cudaStream_t stream);
  void exchange_combine(cudaStream_t stream);
  void gather(cudaStream_t stream);

  EpPlanView plan() const;
  EpExchangeView dispatch_exchange() const;
  EpExchangeView combine_exchange() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe_dispatch
