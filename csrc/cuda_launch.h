// Launchers of the CUDA kernels. The .cu files hold only kernels on raw pointers (fast to compile,
// no ATen); the tensor-level logic that calls them lives in the matching *_cuda.cpp files.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace assigndet {

constexpr int64_t kNmsTile = 64;

// boxes: [n, 4] in score order, fp32 (or fp64 when `is_double`); group: [n] or nullptr;
// mask: n * ceil(n / 64) words of scratch; order: [n] original index of each sorted box;
// removed: ceil(n / 64) words of scratch; keep: [n] output; num_kept: [1] output.
cudaError_t nms_cuda_launch(int64_t n, const void* boxes, bool is_double, const int64_t* group,
                            double threshold, int64_t max_output, const int64_t* order,
                            uint64_t* mask, uint64_t* removed, int64_t* keep, int64_t* num_kept,
                            cudaStream_t stream);

enum class ProbType { kFloat, kDouble, kHalf, kBFloat16 };

// Quality of the K pairs (already sorted by (gt, loc)) and their 64-bit ordering keys. Sets bit 1
// of *error for an out-of-range index and bit 2 for a non-finite value.
cudaError_t pair_quality_launch(int64_t k, const float* pred, const void* probs, ProbType prob_type,
                                int64_t num_classes, const float* gt, const int64_t* gt_cls,
                                const int64_t* loc, const int64_t* gti, int64_t n, int64_t m,
                                float alpha, float* q, uint64_t* key, int* error,
                                cudaStream_t stream);

// Greedy resolution of the sorted pairs. best_gt: [m], best_loc: [n] scratch; gt_pair: [m] filled
// with -1; loc_taken: [n] zeros; matched_loc / matched_q: [m] outputs.
cudaError_t resolve_launch(int64_t k, int64_t m, const int64_t* loc, const int64_t* gti,
                           const uint64_t* key, const float* q, uint64_t* best_gt,
                           uint64_t* best_loc, int64_t* gt_pair, uint8_t* loc_taken,
                           int64_t* matched_loc, float* matched_q, cudaStream_t stream);

constexpr int kPairBadIndex = 1;
constexpr int kPairNotFinite = 2;

}  // namespace assigndet
