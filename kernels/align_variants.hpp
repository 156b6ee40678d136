// Launch shapes of each variant, defined beside its kernels; plan_align() chooses between them.
#pragma once

#include <cstdint>

#include "kernels/align.hpp"

namespace moe_dispatch::kernels {

// Largest numel and E the small variant takes (blocks of 1024 threads, 16 slots per thread;
// per-warp 16-bit counter rows for every expert in shared memory).
inline constexpr std::int64_t kSmallMaxNumel = 16384;
inline constexpr int kSmallMaxExperts = 2048;

// Block shapes of the small variant. A cluster of `cluster` blocks splits the ranking of all slots
// (each block ranks threads * items of them, the blocks exchange their per-expert totals through
// distributed shared memory); every cluster of the grid ranks all slots and writes its share.
struct SmallShape {
  int threads;
  int items;     // slots per thread
  int cluster;   // blocks per cluster (1: no cluster, each block ranks all slots)
  int fill = 0;  // threads per block (whole warps, one-block shapes only) that only fill
  ClusterExchange exchange = ClusterExchange::kBarrier;  // clustered shapes only
  constexpr std::int64_t capacity() const { return std::int64_t{threads} * items * cluster; }
};
inline constexpr ClusterExchange kReleased = ClusterExchange::kReleased;
// Every shape the kernel is built for: the planner's, and the others variant_bench
// compares them with (the planner's clustered shapes with the cluster barrier among them).
inline constexpr SmallShape kSmallShapes[] = {{128, 1, 1},
                                              {128, 1, 1, 64},
                                              {128, 1, 1, 128},
                                              {128, 2, 1, 64},
                                              {128, 2, 1, 128},
                                              {128, 2, 1, 256},
                                              {256, 2, 1},
                                              {256, 2, 1, 128},
                                              {256, 2, 1, 256},
                                              {256, 4, 1},
                                              {256, 4, 1, 256},
                                              {512, 4, 1},
                                              {1024, 4, 1},
                                              {1024, 8, 1},
                                              {1024, 16, 1},
                                              {256, 1, 4},
                                              {128, 2, 4},
                                              {256, 2, 4},
                                              {256, 4, 4},
                                              {256, 1, 8},
                                              {256, 2, 8},
                                              {512, 1, 8},
                                              {512, 2, 8},
                                              {256, 4, 8},
                                              {512, 4, 8},
                                              {256, 8, 8},
                                              {128, 2, 4, 0, kReleased},
                                              {256, 1, 4, 0, kReleased},
                                              {256, 2, 4, 0, kReleased},
                                              {256, 1, 8, 0, kReleased},
                                              {256, 2, 8, 0, kReleased},
                                              {256, 4, 8, 0, kReleased},
                                              {256, 8, 8, 0, kReleased},
                                              {512, 1, 8, 0, kReleased},
                                              {512, 2, 8, 0, kReleased},
                                              {512, 4, 8, 0, kReleased}};
// Whether `shape` is among kSmallShapes.
constexpr bool built(SmallShape shape) {
  for (const SmallShape& s : kSmallShapes) {
    if (s.threads == shape.threads && s.items == shape.items && s.cluster == shape.cluster &&
        s.fill == shape.fill && s.exchange == shape.exchange)
      return true;
  }
  return false;
}
// The planner's shape for steps of up to max_numel slots over up to max_experts experts (the first
// rule that holds).
struct SmallShapeRule {
  std::int64_t max_numel;
  int max_experts;
  SmallShape shape;
};
// Measured (`variant_bench shapes`, H200, 2026-12-02, docs/BENCHMARKS.md; every kernel-time pair
// below from one run, and the same within 0.02 us in the next; the per-replay pairs moved by up to
// 0.2 us between runs, the order within each run the same). Every ranking warp zeroes a counter row
// and the prefix walks over the rows, so each range of steps takes the fewest ranking warps whose
// slots per thread stay cheap:
// - up to 128 slots 128 x 1 with 128 fill threads (04:50Z: E 256 2.14 against 2.33 with 64; at
//   E 8-128 128 and 64 fill threads were level in kernel time (within 0.04), and at 15:46Z, with
//   the grids of kOneKernelEntriesPerBlock, 128 took 0.00-0.13 us less per one-node replay: E 8
//   2.64 against 2.74, E 128 2.65 against 2.78);
// - 129-256 slots 128 x 2, with 64 fill threads up to E 128 and 128 past them (06:46Z: E 8 1.97
//   against 2.17 for 256 x 2 + 128; E 256 2.19 against 2.46; E 1024 3.17 against 3.30 for 256 x 2
//   + 256; 21:3xZ, with the scan in registers: E 1024 2.66 / 3.38 per replay with 128 against 2.83
//   / 3.56 with 256);
// - 257-512 slots 256 x 2, with 128 fill threads up to E 256 and 256 past them (04:50Z: E 256 2.62
//   against 2.68 without and 2.74 with 256; E 512 2.90 against 3.02 without; 06:46Z: 128 x 4 + 128
//   2.71 against 2.53 at E 256);
// - 513-1024 slots one block of 256 x 4 for E <= 8 and E 513-1024 (with 256 fill threads: 15:46Z,
//   E 512 3.30 against 3.39 without, 4.12 against 4.29 per replay), clusters of 4 in between:
//   128 x 2 for E 9-128, 256 x 1 for E 129-512 (2026-12-03 11:53Z, after the clustered shapes
//   zero while their ids load, kernel time / per replay: E 8 256 x 4 2.40 / 3.07 against 2.38 /
//   3.28 for 128 x 2 x 4; E 64 2.43 / 3.17 against 2.50 / 3.40 for 256 x 4; E 128 2.45 / 3.22
//   against 2.62 / 3.53; E 256 2.61 / 3.34 against 2.69 / 3.40; E 512 2.90 / 3.62 against 3.03 /
//   3.78 for 256 x 4; E 1024 + 256 fill 3.42 / 4.24 against 3.68 / 4.54 for 256 x 1 x 4; the
//   planner's plans before and after, 12:1xZ, both builds in one run, two rounds, kernel time:
//   E 64 2.52 -> 2.42, E 128 2.64 -> 2.45, E 256 2.71 -> 2.63, E 512 2.92 against 3.08 for
//   256 x 4 + 256; before that change one block led at every E, 06:37Z: E 256 2.96 against 3.07
//   for 4 x 256 x 1);
// - from 1025 slots clusters of 8 blocks of 256 threads for E <= 512, 1, 2, 4 and 8 slots per
//   thread up to 2048, 4096, 8192 and 16384 slots (06:43Z, E 256: 8192 slots 3.92 against 4.15 for
//   512 x 2 x 8; 16384 4.83 against 4.98 for 512 x 4 x 8; 06:40Z: 256 x 8 x 1 3.77 against 3.24 at
//   2048); for E 513-1024 clusters of 4 x 256 x 2 up to 2048 slots, then of 8 blocks of 512
//   threads, 1, 2 and 4 slots per thread up to 4096, 8192 and 16384 (18:56Z, E 1024, with the
//   grids of kMaxClusteredGrid, kernel time / per replay: 2048 slots 4.73 / 5.40 against 4.80 /
//   5.65 for one block of 512 x 4; 4096 5.02 / 5.75 against 5.23 / 5.98 for 4 x 256 x 4; 8192
//   5.45 / 6.30 against 5.62 / 6.37 for 8 x 256 x 4; 16384 6.28 / 7.25 against 6.63 / 7.64 for
//   8 x 256 x 8; with 128 blocks, 06:43Z-06:46Z, the 256-thread shapes and one block had led);
// - E past 1024 keeps the shapes without fill warps or clusters, not measured against them.
// With the clusters' exchange on st.async (kReleased, H100, 2026-12-06 02:33Z, one run of
// `variant_bench shapes`, kernel time / per replay) two of the rules above moved:
// - 513-1024 slots take clusters of 4 x 256 x 1 at every E up to 1024: E 8 2.21 / 3.23 against
//   2.54 / 3.32 for one block of 256 x 4 (128 x 2 x 4 2.25 / 3.15); E 64 2.26 / 3.17 and E 128
//   2.31 / 3.20 against 2.29 / 3.23 and 2.35 / 3.26 for 128 x 2 x 4; E 1024 3.52 / 4.47 against
//   3.55 / 4.63 for 256 x 4 + 256; at 512 slots one block still leads (E 8 1.99 against 2.18);
// - 8193-16384 slots for E <= 512 take 8 x 512 x 4: E 8 4.14 / 5.28 against 4.34 / 5.48 for
//   8 x 256 x 8, E 64 3.90 / 4.99 against 4.08 / 5.05, E 256 4.30 / 5.41 against 4.33 / 5.47,
//   E 512 4.67 / 5.65 against 4.72 / 5.75.
inline constexpr SmallShapeRule kSmallShapeRules[] = {
    {128, 1024, {128, 1, 1, 128}},
    {256, 128, {128, 2, 1, 64}},
    {256, 1024, {128, 2, 1, 128}},
    {512, 256, {256, 2, 1, 128}},
    {512, 1024, {256, 2, 1, 256}},
    {512, kSmallMaxExperts, {256, 2, 1}},
    {1024, 1024, {256, 1, 4, 0, kReleased}},
    {2048, 512, {256, 1, 8, 0, kReleased}},
    {4096, 512, {256, 2, 8, 0, kReleased}},
    {8192, 512, {256, 4, 8, 0, kReleased}},
    {kSmallMaxNumel, 512, {512, 4, 8, 0, kReleased}},
    {2048, 1024, {256, 2, 4, 0, kReleased}},
    {2048, kSmallMaxExperts, {512, 4, 1}},
    {4096, 1024, {512, 1, 8, 0, kReleased}},
    {8192, 1024, {512, 2, 8, 0, kReleased}},
    {kSmallMaxNumel, 1024, {512, 4, 8, 0, kReleased}},
    {4096, kSmallMaxExperts, {1024, 4, 1}},
    {8192, kSmallMaxExperts, {1024, 8, 1}},
    {kSmallMaxNumel, kSmallMaxExperts, {1024, 16, 1}}};
// Every rule's shape holds the steps it takes (the launcher refuses a shape that does not).
constexpr bool small_rules_hold_their_steps() {
  for (const SmallShapeRule& rule : kSmallShapeRules) {
    if (rule.shape.capacity() < rule.max_numel) return false;
  }
  return true;
}
static_assert(small_rules_hold_their_steps());
constexpr bool small_rules_are_built() {
  for (SmallShapeRule rule : kSmallShapeRules) {
    if (!built(rule.shape)) return false;
    if (rule.shape.cluster == 1) continue;
    // Clustered rules take kReleased, and their cluster-barrier form is built for variant_bench
    // exchange to compare with.
    if (rule.shape.exchange != kReleased) return false;
    rule.shape.exchange = ClusterExchange::kBarrier;
    if (!built(rule.shape)) return false;
  }
  return true;
}
static_assert(small_rules_are_built());

// Shapes of the large variant, for steps of up to max_numel slots over up to max_experts experts
// (the first rule that holds; past them all, 8 slots per thread and 3 kernels, which E 257-1024
// at 131073-262144 slots take): slots per thread
// (2, 4 or 8) and kernels (2: the scatter kernel adds up the count kernel's cluster totals
// itself; 3: a prefix kernel scans them first). Two kernels are ahead while a thread adds up few
// totals (clusters x experts per thread) and fall behind steeply past that, since a thread adds up
// its experts one after another; more slots per thread (fewer, fuller blocks, so fewer totals)
// win as the step or E grows, since every block handles all E experts. Measured with 4096 output
// entries per scatter block (`variant_bench large`, H200, 2026-12-02 13:52Z, two runs, each form
// within 0.05 us between them but 8 x 2 at E 1024 and 4096, 0.13 and 0.45; docs/BENCHMARKS.md), the
// best form of each row, against the next: E 8 at 131072 slots 4 x 2 6.54 (8 x 2 6.58); E 64 and
// 128 there 8 x 2 6.21 and 6.39 (4 x 2 6.34 and 6.51); E 1024 at 131072 8 x 2 9.57 (4 x 3 10.72),
// at 262144 8 x 3 11.75 (4 x 3 14.21); E 2048 at 32768 4 x 2 13.66 (2 x 3 14.33, 4 x 3 14.62); E
// 4096 at 32768 8 x 2 31.55 (2 x 3 32.31).
struct LargeShapeRule {
  std::int64_t max_numel;
  int max_experts;
  int items;
  int kernels;
};
inline constexpr LargeShapeRule kLargeShapeRules[] = {
    {32768, 1024, 2, 2}, {8192, 2048, 2, 2},  {8192, 4096, 4, 2}, {32768, 2048, 4, 2},
    {32768, 4096, 8, 2}, {65536, 1024, 4, 2}, {131072, 8, 4, 2},  {131072, 1024, 8, 2},
    {262144, 256, 8, 2}, {65536, 4096, 4, 3}};
// The forms the large variant is built for (its launcher refuses others).
constexpr bool large_rules_are_built() {
  for (const LargeShapeRule& rule : kLargeShapeRules) {
    if (rule.items != 2 && rule.items != 4 && rule.items != 8) return false;
    if (rule.kernels != 2 && rule.kernels != 3) return false;
  }
  return true;
}
static_assert(large_rules_are_built());

// Largest numel the tiny variant takes (2 slots per lane of one warp; its masks grow with the
// square of the slots per lane: at 4 it was measured slower than the small variant for E <= 256).
inline constexpr std::int64_t kTinyMaxNumel = 64;

// Output entries (slots, padding and tail) per block of a small kernel in clusters, and the most
// blocks it takes, so the stores spread over SMs while few blocks start. Measured against the
// former 1024 entries per block and 128 blocks (H200, 2026-12-02): per one-node replay in whole
// clusters (`variant_bench grids`, 18:2xZ, count as a kernel parameter) E 1024 (B 128) at 8192
// slots 8 clusters of 8 6.30 us against 16 7.74, E 256 at 8192 slots 6 clusters 4.51 against 3
// 4.63, level within 0.05 us elsewhere, 16 clusters of 8 slower at every point (0.2-1.4 us); the
// planner's plans before and after (`variant_bench planned`, 18:35Z, two rounds each), E 1024 at
// 4096 slots 6.52 -> 5.27 us kernel time (graph of 100) and 7.25/7.32 -> 6.13/6.01 per replay, at
// 8192 7.03 -> 5.63 and 7.95/7.85 -> 6.42/6.32; every other clustered point within -0.09/+0.02
// us in kernel time, per replay within the rounds' spread.
inline constexpr std::int64_t kClusteredEntriesPerBlock = 512;
inline constexpr int kMaxClusteredGrid = 64;
// The kernels without clusters (tiny, and small in one block) replay as a one-node graph in a
// DispatchStage, and a replay pays for every block of the grid (bench/floor_bench: 17 blocks
// against 1 cost 0.23 us more per replay), while every block ranks all slots itself and fills its
// share of the outputs meanwhile. So they take 4096 entries per block, and the small variant,
// whose ranking hides less fill than the tiny one's at small E, at least one block per 1024 up to
// 9 blocks. Measured with `variant_bench grids` (one-node replays with the count as a kernel
// parameter, H200, 2026-12-02, 15:30Z / 15:43Z; per replay, against the former 512 entries per
// tiny block and 1024 per small one): tiny, 8 slots at E 1024, 33 blocks 2.29 / 2.27 us (128:
// 2.46 / 2.59); small, 128 slots, E 256 9 blocks 2.58 / 2.65 (17: 2.74 / 2.86), E 1024 33 3.54 /
// 3.74 (128: 3.85 / 3.91); 512 slots, E 512 9 3.37 / 3.44 (33: 3.53 / 3.56). Tiny at 64 slots
// gained in the first run only (E 512 9 blocks 2.45 against 2.61, then 2.60 both). Level
// elsewhere within a replay's 0.08 us steps, but E 2048 at 4096 slots (65 blocks 11.21 against
// 33 11.32); fewer blocks than these are slower.
inline constexpr std::int64_t kOneKernelEntriesPerBlock = 4096;
inline constexpr std::int64_t kOneBlockSmallEntriesPerBlock = 1024;
inline constexpr int kOneBlockSmallMinGrid = 9;
// And they take at most one block per SM of the H100 (measured against 32 at E = 1024: 5% faster
// at decode, 9% at 8192 slots, when the one-block shapes took one block per 1024 entries; at 4096
// per block they reach it only past 524288 entries).
inline constexpr int kMaxOneKernelGrid = 128;

// Blocks that share the writing of `entries` output entries: one per `per_block`, at least 1, at
// most max_blocks.
constexpr int write_blocks(std::int64_t entries, int max_blocks, std::int64_t per_block) {
  const std::int64_t blocks = (entries + per_block - 1) / per_block;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > max_blocks ? max_blocks : blocks));
}

// The grid of a small kernel without clusters for `entries` output entries.
constexpr int one_block_small_grid(std::int64_t entries) {
  const int fill = write_blocks(entries, kOneBlockSmallMinGrid, kOneBlockSmallEntriesPerBlock);
  const int share = write_blocks(entries, kMaxOneKernelGrid, kOneKernelEntriesPerBlock);
  return fill > share ? fill : share;
}

// AlignParams::region_blocks for a one-kernel launch whose output blocks (those defined at its
// capacity) are shared by `owners` writers: ceil(blocks / owners), at least 1.
int region_blocks(const AlignParams& params, int owners);

// Variant launchers, called by launch_align only: they expect AlignParams::block_div and
// AlignParams::grid derived from the plan, which launch_align fills in.
cudaError_t launch_align_tiny(const AlignParams& params, const AlignPlan& plan,
                              cudaStream_t stream);
cudaError_t launch_align_small(const AlignParams& params, const AlignPlan& plan,
                               cudaStream_t stream);
cudaError_t launch_align_large(const AlignParams& params, const AlignPlan& plan,
                               cudaStream_t stream);

AlignPlan tiny_plan(std::int64_t max_numel, int num_experts, int block_size);
AlignPlan small_plan(std::int64_t max_numel, int num_experts, int block_size);
// The small variant in a given shape (variant_bench compares the shapes).
AlignPlan small_plan(std::int64_t max_numel, int num_experts, int block_size,
                     const SmallShape& shape);
AlignPlan large_plan(std::int64_t max_numel, int num_experts, int block_size);
// The large variant with the given number of kernels, 2 (the scatter kernel adds up the cluster
// totals itself) or 3 (a prefix kernel scans them first), and slots per thread (2, 4 or 8);
// variant_bench compares them.
AlignPlan large_plan(std::int64_t max_numel, int num_experts, int block_size, int kernels,
                     int items);
std::size_t large_scratch_ints(const AlignPlan& plan, int num_experts);

}  // namespace moe_dispatch::kernels
