// floor_bench: what any one-kernel dispatch costs on this GPU before it computes anything, measured
// the two ways dispatch_bench measures the kernels: per node in a graph of 100 launches ("graph")
// and per replay of a one-node graph ("replay"; "queued": the replays enqueued first, then run back
// to back, bench/queued_timing.hpp), and the host time of one cudaGraphLaunch (the part
// of DispatchStage::run() that is the driver's). Reference kernels: an empty one, and one that
// loads a 32-slot row and stores it (the least a dispatch kernel must do: read the routing, write
// an output), on 1 block and on 17 blocks (a decode-sized grid); and what the clustered small
// shapes pay for their clusters: 40 blocks of 256 threads (the grid of 2048 slots at E = 256,
// B = 64) empty without and with clusters of 8, with the start wait and one cluster barrier, and
// with a fill of 512 entries per block before a block barrier or a cluster barrier. Then the
// host cost of the runtime calls run() makes besides the launch, the launch and two of those calls
// through the runtime and through the driver in interleaved rounds, and of the kernel-parameter
// update it makes when a count changes, against a stream write of the count before the launch.
// The first table is measured twice: while the process has run work on one stream only, and after
// it has run work on two (the state of an engine's process, bench/two_streams.hpp).
#include <cuda.h>
#include <cudaTypedefs.h>

#include <cooperative_groups.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "moe_dispatch/cuda_raii.hpp"
#include "moe_dispatch/errors.hpp"
#include "queued_timing.hpp"
#include "two_streams.hpp"

namespace md = moe_dispatch;

namespace {

__global__ void empty_kernel() {}

// Every warp loads the same 32 ids and writes its lanes' copy to its own slice of `out`.
__global__ void load_store_kernel(const int* in, int* out) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int warp = static_cast<int>((blockIdx.x * blockDim.x + threadIdx.x) / 32);
  out[warp * 32 + lane] = __ldg(in + lane) + 1;
}

// The clustered small shapes' synchronization without their work: every block arrives (relaxed)
// at its start and waits before the exchange, then the cluster barrier (release and acquire).
__global__ void cluster_barrier_kernel() {
  __cluster_barrier_arrive_relaxed();
  __cluster_barrier_wait();
  cooperative_groups::this_cluster().sync();
}

// Each block writes 512 entries of `out` (its owned output blocks), then waits at a block barrier
// or, with kCluster, at the clustered shapes' start wait and cluster barrier, which orders the
// stores before every later write of the cluster.
template <bool kCluster>
__global__ void fill_barrier_kernel(int* out) {
  if constexpr (kCluster) __cluster_barrier_arrive_relaxed();
  int* own = out + blockIdx.x * 512;
  own[threadIdx.x] = -1;
  own[threadIdx.x + 256] = -1;
  if constexpr (kCluster) {
    __cluster_barrier_wait();
    cooperative_groups::this_cluster().sync();
  } else {
    __syncthreads();
  }
}

using Launch = void (*)(cudaStream_t, const int*, int*, int);

void launch_empty(cudaStream_t stream, const int*, int*, int grid) {
  empty_kernel<<<grid, 128, 0, stream>>>();
}
void launch_load_store(cudaStream_t stream, const int* in, int* out, int grid) {
  load_store_kernel<<<grid, 128, 0, stream>>>(in, out);
}

constexpr int kClusterGrid = 40;
constexpr int kClusterBlocks = 8;

template <typename... Args>
void launch_clustered(void (*kernel)(Args...), cudaStream_t stream, int grid, Args... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = kClusterBlocks;
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(256);
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  MOE_DISPATCH_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args...));
}

void launch_empty_256(cudaStream_t stream, const int*, int*, int grid) {
  empty_kernel<<<grid, 256, 0, stream>>>();
}
void launch_empty_clustered(cudaStream_t stream, const int*, int*, int grid) {
  launch_clustered(empty_kernel, stream, grid);
}
void launch_cluster_barrier(cudaStream_t stream, const int*, int*, int grid) {
  launch_clustered(cluster_barrier_kernel, stream, grid);
}
void launch_fill_block_barrier(cudaStream_t stream, const int*, int* out, int grid) {
  fill_barrier_kernel<false><<<grid, 256, 0, stream>>>(out);
}
void launch_fill_cluster_barrier(cudaStream_t stream, const int*, int* out, int grid) {
  launch_clustered(fill_barrier_kernel<true>, stream, grid, out);
}

md::Graph capture_graph(Launch launch, int calls, cudaStream_t stream, const int* in, int* out,
                        int grid) {
  MOE_DISPATCH_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) {
    launch(stream, in, out, grid);
    MOE_DISPATCH_CUDA_CHECK(cudaGetLastError());
  }
  cudaGraph_t raw = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaStreamEndCapture(stream, &raw));
  return md::Graph(raw);
}

md::GraphExec instantiate(const md::Graph& graph, cudaStream_t stream) {
  cudaGraphExec_t exec = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphInstantiate(&exec, graph.get(), 0));
  md::GraphExec owned(exec);
  MOE_DISPATCH_CUDA_CHECK(cudaGraphUpload(exec, stream));
  return owned;
}

md::GraphExec capture(Launch launch, int calls, cudaStream_t stream, const int* in, int* out,
                      int grid) {
  return instantiate(capture_graph(launch, calls, stream, in, out, grid), stream);
}

// Median over 15 samples of (time of `launches` launches of exec) / (calls per launch).
double median_us(cudaGraphExec_t exec, int launches, int calls, cudaStream_t stream) {
  const md::Event start = md::make_event(true);
  const md::Event stop = md::make_event(true);
  for (int i = 0; i < launches; ++i) MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  std::vector<double> samples;
  for (int t = 0; t < 15; ++t) {
    MOE_DISPATCH_CUDA_CHECK(cudaEventRecord(start.get(), stream));
    for (int i = 0; i < launches; ++i) MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    MOE_DISPATCH_CUDA_CHECK(cudaEventRecord(stop.get(), stream));
    MOE_DISPATCH_CUDA_CHECK(cudaEventSynchronize(stop.get()));
    float ms = 0;
    MOE_DISPATCH_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    samples.push_back(1000.0 * ms / (launches * calls));
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

// Host time of one call of `call(i)`: batches of 100 with the queue drained between (as
// dispatch_bench measures run()), median of 50.
template <typename Call>
double host_call_us(const Call& call, cudaStream_t stream) {
  std::vector<double> samples;
  for (int t = 0; t < 50; ++t) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 100; ++i) call(i);
    const auto t1 = std::chrono::steady_clock::now();
    samples.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / 100);
    MOE_DISPATCH_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

double host_launch_us(cudaGraphExec_t exec, cudaStream_t stream) {
  return host_call_us([&](int) { MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(exec, stream)); }, stream);
}

// Host time of one call of `query` (what DispatchStage::run() asks the runtime before its launch),
// median of 50 batches of 1000.
template <typename Query>
double host_query_ns(const Query& query) {
  std::vector<double> samples;
  for (int t = 0; t < 50; ++t) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 1000; ++i) MOE_DISPATCH_CUDA_CHECK(query());
    const auto t1 = std::chrono::steady_clock::now();
    samples.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / 1000);
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

// A driver entry point (as runtime/kernel_node_update.cpp resolves its calls); throws CudaError
// naming the symbol when the driver lacks it.
template <typename Function>
Function driver_entry(const char* symbol, int version) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  MOE_DISPATCH_CUDA_CHECK(
      cudaGetDriverEntryPointByVersion(symbol, &fn, version, cudaEnableDefault, &found));
  if (found != cudaDriverEntryPointSuccess || fn == nullptr) {
    md::detail::throw_cuda_error(cudaErrorSymbolNotFound, symbol, __FILE__, __LINE__);
  }
  return reinterpret_cast<Function>(fn);
}

}  // namespace

int main() {
  const md::Stream stream = md::make_stream();
  constexpr int kMaxGrid = 17;
  md::DeviceBuffer<int> in(32);
  md::DeviceBuffer<int> out(kClusterGrid * 512);
  MOE_DISPATCH_CUDA_CHECK(cudaMemset(in.get(), 0, in.bytes()));
  struct Case {
    const char* name;
    Launch launch;
    int grid;
  };
  const Case cases[] = {
      {"empty", launch_empty, 1},
      {"load 32 ids, store", launch_load_store, 1},
      {"load 32 ids, store", launch_load_store, kMaxGrid},
      {"empty, 256 threads", launch_empty_256, kClusterGrid},
      {"empty, 256 threads, clusters of 8", launch_empty_clustered, kClusterGrid},
      {"start wait and cluster barrier, 256 threads, clusters of 8", launch_cluster_barrier,
       kClusterGrid},
      {"fill 512 entries, block barrier, 256 threads", launch_fill_block_barrier, kClusterGrid},
      {"fill 512 entries, start wait and cluster barrier, 256 threads, clusters "
       "of 8",
       launch_fill_cluster_barrier, kClusterGrid}};
  std::printf(
      "| kernel | blocks | process | graph µs (per node of 100) | replay µs (one-node graph) | "
      "replay GPU µs, queued | host µs per cudaGraphLaunch |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  cudaStream_t s = stream.get();
  // Each case first with work run on this one stream only, then in an engine's process state.
  for (const bool two_streams : {false, true}) {
    if (two_streams) md::bench::run_work_on_two_streams();
    for (const Case& c : cases) {
      const md::GraphExec hundred =
          capture(c.launch, 100, stream.get(), in.get(), out.get(), c.grid);
      const md::GraphExec one = capture(c.launch, 1, stream.get(), in.get(), out.get(), c.grid);
      const cudaGraphExec_t one_exec = one.get();
      std::printf("| %s | %d | %s | %.2f | %.2f | %.2f | %.2f |\n", c.name, c.grid,
                  two_streams ? "two streams" : "one stream", median_us(hundred.get(), 1, 100, s),
                  median_us(one_exec, 1000, 1, s),
                  md::bench::queued_us_per_call(
                      s, 15, 64, [&] { MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(one_exec, s)); }),
                  host_launch_us(one_exec, s));
    }
  }
  int device = 0;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  std::printf("\n| runtime query (host) | ns per call |\n|---|---|\n");
  std::printf("| cudaGetDevice | %.0f |\n", host_query_ns([&] { return cudaGetDevice(&device); }));
  std::printf("| cudaStreamGetCaptureInfo | %.0f |\n", host_query_ns([&] {
                return cudaStreamGetCaptureInfo(s, &status, nullptr, nullptr, nullptr, nullptr,
                                                nullptr);
              }));
  std::printf("| cudaStreamGetDevice | %.0f |\n",
              host_query_ns([&] { return cudaStreamGetDevice(s, &device); }));

  // The launch and the queries run() makes, through the runtime and through the driver's entry
  // points (resolved as runtime/kernel_node_update.cpp resolves its call), in interleaved rounds so
  // that both see the same host.
  {
    const auto cu_launch = driver_entry<PFN_cuGraphLaunch_v10000>("cuGraphLaunch", 10000);
    const auto cu_capture_info =
        driver_entry<PFN_cuStreamGetCaptureInfo_v12030>("cuStreamGetCaptureInfo", 12030);
    const auto cu_ctx_device = driver_entry<PFN_cuCtxGetDevice_v2000>("cuCtxGetDevice", 2000);
    const auto driver_ok = [](CUresult r) {
      if (r != CUDA_SUCCESS) {
        md::detail::throw_cuda_error(static_cast<cudaError_t>(r), "driver call", __FILE__,
                                     __LINE__);
      }
    };
    const md::GraphExec exec = capture(launch_load_store, 1, s, in.get(), out.get(), 1);
    const cudaGraphExec_t one_exec = exec.get();
    const auto cs = reinterpret_cast<CUstream>(s);
    const auto cexec = reinterpret_cast<CUgraphExec>(one_exec);
    std::printf(
        "\n| round | cudaGraphLaunch µs | cuGraphLaunch µs | cudaGetDevice ns | cuCtxGetDevice ns "
        "| cudaStreamGetCaptureInfo ns | cuStreamGetCaptureInfo ns "
        "|\n|---|---|---|---|---|---|---|\n");
    for (int round = 0; round < 5; ++round) {
      const double runtime_launch = host_launch_us(one_exec, s);
      const double driver_launch = host_call_us([&](int) { driver_ok(cu_launch(cexec, cs)); }, s);
      int device = 0;
      CUdevice cu_device = 0;
      cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
      CUstreamCaptureStatus cu_status = CU_STREAM_CAPTURE_STATUS_NONE;
      const double get_device = host_query_ns([&] { return cudaGetDevice(&device); });
      const double ctx_device =
          host_query_ns([&] { return static_cast<cudaError_t>(cu_ctx_device(&cu_device)); });
      const double capture = host_query_ns([&] {
        return cudaStreamGetCaptureInfo(s, &status, nullptr, nullptr, nullptr, nullptr, nullptr);
      });
      const double cu_capture = host_query_ns([&] {
        return static_cast<cudaError_t>(
            cu_capture_info(cs, &cu_status, nullptr, nullptr, nullptr, nullptr, nullptr));
      });
      std::printf("| %d | %.2f | %.2f | %.0f | %.0f | %.0f | %.0f |\n", round, runtime_launch,
                  driver_launch, get_device, ctx_device, capture, cu_capture);
    }
  }

  // The update run() makes when a count changes: one kernel node's arguments on an executable
  // graph (here the output pointer, alternating between two values), by the runtime call and by
  // the driver call run() makes (resolved as runtime/kernel_node_update.cpp resolves it), alone
  // and before a launch: of the graph updated, or of two graphs taking the updates in turn.
  const md::Graph graph = capture_graph(launch_load_store, 1, s, in.get(), out.get(), 1);
  const md::GraphExec execs[2] = {instantiate(graph, s), instantiate(graph, s)};
  cudaGraphNode_t node = nullptr;
  std::size_t num_nodes = 1;
  MOE_DISPATCH_CUDA_CHECK(cudaGraphGetNodes(graph.get(), &node, &num_nodes));
  cudaKernelNodeParams params{};
  MOE_DISPATCH_CUDA_CHECK(cudaGraphKernelNodeGetParams(node, &params));
  const auto driver_set = driver_entry<PFN_cuGraphExecKernelNodeSetParams_v12000>(
      "cuGraphExecKernelNodeSetParams", 12000);
  cudaFunction_t function = nullptr;
  MOE_DISPATCH_CUDA_CHECK(cudaGetFuncBySymbol(&function, params.func));
  CUDA_KERNEL_NODE_PARAMS driver_params{};
  driver_params.func = function;
  driver_params.gridDimX = params.gridDim.x;
  driver_params.gridDimY = params.gridDim.y;
  driver_params.gridDimZ = params.gridDim.z;
  driver_params.blockDimX = params.blockDim.x;
  driver_params.blockDimY = params.blockDim.y;
  driver_params.blockDimZ = params.blockDim.z;
  driver_params.sharedMemBytes = params.sharedMemBytes;
  const int* in_arg = in.get();
  int* out_args[2] = {out.get(), out.get() + 32};
  void* args[2][2] = {{&in_arg, &out_args[0]}, {&in_arg, &out_args[1]}};
  const auto runtime_update = [&](int exec, int i) {
    params.kernelParams = args[i & 1];
    MOE_DISPATCH_CUDA_CHECK(cudaGraphExecKernelNodeSetParams(execs[exec].get(), node, &params));
  };
  const auto driver_update = [&](int exec, int i) {
    driver_params.kernelParams = args[i & 1];
    const CUresult result = driver_set(execs[exec].get(), node, &driver_params);
    if (result != CUDA_SUCCESS) {
      md::detail::throw_cuda_error(static_cast<cudaError_t>(result),
                                   "cuGraphExecKernelNodeSetParams", __FILE__, __LINE__);
    }
  };
  const auto launch = [&](int exec) {
    MOE_DISPATCH_CUDA_CHECK(cudaGraphLaunch(execs[exec].get(), s));
  };
  std::printf("| cudaGraphExecKernelNodeSetParams | %.0f |\n",
              1000 * host_call_us([&](int i) { runtime_update(0, i); }, s));
  std::printf("| cuGraphExecKernelNodeSetParams (driver entry point) | %.0f |\n",
              1000 * host_call_us([&](int i) { driver_update(0, i); }, s));
  std::printf(
      "\n| host µs per call (cudaGraphLaunch alone: %.2f) | update by the runtime call | "
      "by the driver call |\n|---|---|---|\n",
      host_launch_us(execs[0].get(), s));
  const auto update_and_launch = [&](const auto& update, bool in_turn) {
    return host_call_us(
        [&](int i) {
          // Every update gives its graph the other value than it holds: in turn, graph i % 2
          // takes value (i / 2) % 2.
          const int exec = in_turn ? (i & 1) : 0;
          update(exec, in_turn ? (i >> 1) : i);
          launch(exec);
        },
        s);
  };
  std::printf("| update and launch, one executable graph | %.2f | %.2f |\n",
              update_and_launch(runtime_update, false), update_and_launch(driver_update, false));
  std::printf("| update and launch, two in turn | %.2f | %.2f |\n",
              update_and_launch(runtime_update, true), update_and_launch(driver_update, true));

  // Another way to give a graph a count without updating it: a stream write of the count into
  // device memory (cuStreamWriteValue32) before the launch, which the graph's kernel would read.
  // Host time, and GPU time per call queued, against the launch alone and the update.
  const auto write_value =
      driver_entry<PFN_cuStreamWriteValue32_v11070>("cuStreamWriteValue32", 11070);
  md::DeviceBuffer<int> count(1);
  const auto write_count = [&](int i) {
    const CUresult result =
        write_value(reinterpret_cast<CUstream>(s), reinterpret_cast<CUdeviceptr>(count.get()),
                    static_cast<cuuint32_t>(i), 0);
    if (result != CUDA_SUCCESS) {
      md::detail::throw_cuda_error(static_cast<cudaError_t>(result), "cuStreamWriteValue32",
                                   __FILE__, __LINE__);
    }
  };
  const auto queued = [&](const auto& call) {
    int i = 0;
    return md::bench::queued_us_per_call(s, 15, 64, [&] { call(i++); });
  };
  std::printf(
      "\n| per call | host µs | GPU µs, queued |\n|---|---|---|\n"
      "| cudaGraphLaunch alone | %.2f | %.2f |\n",
      host_launch_us(execs[0].get(), s), queued([&](int) { launch(0); }));
  const auto update_then_launch = [&](int i) {
    driver_update(0, i);
    launch(0);
  };
  std::printf("| update (driver call) and launch | %.2f | %.2f |\n",
              host_call_us(update_then_launch, s), queued(update_then_launch));
  const auto write_then_launch = [&](int i) {
    write_count(i);
    launch(0);
  };
  std::printf("| cuStreamWriteValue32 and launch | %.2f | %.2f |\n",
              host_call_us(write_then_launch, s), queued(write_then_launch));
  int written = -1;
  MOE_DISPATCH_CUDA_CHECK(cudaMemcpy(&written, count.get(), sizeof(int), cudaMemcpyDeviceToHost));
  std::printf("(last count written: %d)\n", written);

  return 0;
}
