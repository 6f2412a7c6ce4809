// Top-one matcher kernels. One kernel computes the quality of the K candidate pairs and packs it
// with a tie-break rank into a 64-bit key; one thread block then resolves conflicts.
//
// Resolution: with all keys distinct, the greedy matching that takes pairs in decreasing key is the
// same as the one built by repeatedly accepting every "locally dominant" pair, a free pair whose key
// is the largest among the free pairs of its gt and among the free pairs of its location (a free
// pair has an unmatched gt and an untaken location). The largest free pair is always locally
// dominant, so each round makes progress; with disjoint candidate sets a single round suffices.
// The key order is (quality desc, gt asc, location asc), as on the CPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda_launch.h"

namespace assigndet {
namespace {

constexpr int kThreads = 256;
constexpr int kResolveThreads = 1024;

__device__ inline float pair_iou(const float* a, const float* b) {
  const float w = fmaxf(0.f, __fsub_rn(fminf(a[2], b[2]), fmaxf(a[0], b[0])));
  const float h = fmaxf(0.f, __fsub_rn(fminf(a[3], b[3]), fmaxf(a[1], b[1])));
  const float inter = __fmul_rn(w, h);
  const float area_a = __fmul_rn(__fsub_rn(a[2], a[0]), __fsub_rn(a[3], a[1]));
  const float area_b = __fmul_rn(__fsub_rn(b[2], b[0]), __fsub_rn(b[3], b[1]));
  const float uni = __fsub_rn(__fadd_rn(area_a, area_b), inter);
  return uni > 0.f ? __fdiv_rn(inter, uni) : 0.f;
}

// Pairs arrive sorted by (gt, location); r is the tie-break rank, lower wins.
__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(double v) { return static_cast<float>(v); }
__device__ inline float to_float(__half v) { return __half2float(v); }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename P>
__global__ void pair_quality_kernel(int64_t k, const float* __restrict__ pred,
                                    const P* __restrict__ probs, int64_t num_classes,
                                    const float* __restrict__ gt,
                                    const int64_t* __restrict__ gt_cls,
                                    const int64_t* __restrict__ loc,
                                    const int64_t* __restrict__ gti, int64_t n, int64_t m,
                                    float alpha, float* __restrict__ q,
                                    unsigned long long* __restrict__ key, int* __restrict__ error) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < k;
       r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = loc[r];
    const int64_t j = gti[r];
    if (i < 0 || i >= n || j < 0 || j >= m || gt_cls[j] < 0 || gt_cls[j] >= num_classes) {
      atomicOr(error, kPairBadIndex);
      continue;
    }
    const float* box = pred + 4 * i;
    const float* g = gt + 4 * j;
    const float p = to_float(probs[i * num_classes + gt_cls[j]]);
    bool finite = isfinite(p);
    for (int d = 0; d < 4; ++d) {
      finite = finite && isfinite(box[d]) && isfinite(g[d]);
    }
    if (!finite) {
      atomicOr(error, kPairNotFinite);
      continue;
    }
    const float value = __fmul_rn(powf(p, 1.f - alpha), powf(pair_iou(box, g), alpha));
    q[r] = value;
    // value >= 0, so its bit pattern orders like the value; the low word makes keys distinct.
    key[r] = (static_cast<unsigned long long>(__float_as_uint(value)) << 32) |
             static_cast<unsigned long long>(0xFFFFFFFFu - static_cast<unsigned int>(r));
  }
}

__device__ inline bool is_free(const int64_t* gt_pair, const unsigned char* loc_taken, int64_t j,
                               int64_t i) {
  // L2 loads: the flags change between rounds of the same block.
  return __ldcg(reinterpret_cast<const long long*>(gt_pair) + j) < 0 && !__ldcg(loc_taken + i);
}

__global__ void resolve_kernel(int64_t k, int64_t m, const int64_t* __restrict__ loc,
                               const int64_t* __restrict__ gti,
                               const unsigned long long* __restrict__ key, const float* __restrict__ q,
                               unsigned long long* best_gt, unsigned long long* best_loc,
                               int64_t* gt_pair, unsigned char* loc_taken,
                               int64_t* __restrict__ matched_loc, float* __restrict__ matched_q) {
  __shared__ int changed;
  while (true) {
    for (int64_t r = threadIdx.x; r < k; r += blockDim.x) {
      if (is_free(gt_pair, loc_taken, gti[r], loc[r])) {
        best_gt[gti[r]] = 0;
        best_loc[loc[r]] = 0;
      }
    }
    if (threadIdx.x == 0) {
      changed = 0;
    }
    __syncthreads();
    for (int64_t r = threadIdx.x; r < k; r += blockDim.x) {
      if (is_free(gt_pair, loc_taken, gti[r], loc[r])) {
        atomicMax(best_gt + gti[r], key[r]);
        atomicMax(best_loc + loc[r], key[r]);
      }
    }
    __syncthreads();
    for (int64_t r = threadIdx.x; r < k; r += blockDim.x) {
      // A pair matched in an earlier round still equals its stale bests; the free test skips it.
      // Within this round the accepted pairs share no gt and no location (keys are distinct).
      if (is_free(gt_pair, loc_taken, gti[r], loc[r]) && __ldcg(best_gt + gti[r]) == key[r] &&
          __ldcg(best_loc + loc[r]) == key[r]) {
        gt_pair[gti[r]] = r;
        loc_taken[loc[r]] = 1;
        changed = 1;
      }
    }
    __syncthreads();
    if (!changed) {
      break;
    }
    __syncthreads();  // every thread has read `changed` before it is reset
  }
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    const int64_t r = __ldcg(reinterpret_cast<const long long*>(gt_pair) + j);
    matched_loc[j] = r >= 0 ? loc[r] : -1;
    matched_q[j] = r >= 0 ? q[r] : 0.f;
  }
}

}  // namespace

cudaError_t pair_quality_launch(int64_t k, const float* pred, const void* probs, ProbType prob_type,
                                int64_t num_classes, const float* gt, const int64_t* gt_cls,
                                const int64_t* loc, const int64_t* gti, int64_t n, int64_t m,
                                float alpha, float* q, uint64_t* key, int* error,
                                cudaStream_t stream) {
  const int blocks = static_cast<int>(std::min<int64_t>((k + kThreads - 1) / kThreads, 4096));
  auto* keys = reinterpret_cast<unsigned long long*>(key);
  switch (prob_type) {
    case ProbType::kFloat:
      pair_quality_kernel<<<blocks, kThreads, 0, stream>>>(
          k, pred, static_cast<const float*>(probs), num_classes, gt, gt_cls, loc, gti, n, m, alpha,
          q, keys, error);
      break;
    case ProbType::kDouble:
      pair_quality_kernel<<<blocks, kThreads, 0, stream>>>(
          k, pred, static_cast<const double*>(probs), num_classes, gt, gt_cls, loc, gti, n, m,
          alpha, q, keys, error);
      break;
    case ProbType::kHalf:
      pair_quality_kernel<<<blocks, kThreads, 0, stream>>>(
          k, pred, static_cast<const __half*>(probs), num_classes, gt, gt_cls, loc, gti, n, m,
          alpha, q, keys, error);
      break;
    case ProbType::kBFloat16:
      pair_quality_kernel<<<blocks, kThreads, 0, stream>>>(
          k, pred, static_cast<const __nv_bfloat16*>(probs), num_classes, gt, gt_cls, loc, gti, n,
          m, alpha, q, keys, error);
      break;
  }
  return cudaGetLastError();
}

cudaError_t resolve_launch(int64_t k, int64_t m, const int64_t* loc, const int64_t* gti,
                           const uint64_t* key, const float* q, uint64_t* best_gt,
                           uint64_t* best_loc, int64_t* gt_pair, uint8_t* loc_taken,
                           int64_t* matched_loc, float* matched_q, cudaStream_t stream) {
  resolve_kernel<<<1, kResolveThreads, 0, stream>>>(
      k, m, loc, gti, reinterpret_cast<const unsigned long long*>(key), q,
      reinterpret_cast<unsigned long long*>(best_gt), reinterpret_cast<unsigned long long*>(best_loc),
      gt_pair, loc_taken, matched_loc, matched_q);
  return cudaGetLastError();
}

}  // namespace assigndet
