// Greedy NMS kernels. A 64 x 64 tiled kernel writes, for every box, the bitmask of later boxes (in
// score order) it would suppress; one thread block then walks the boxes in score order on the device
// and keeps those no kept box suppresses. Boxes of different groups never set a bit, so a batched
// call is one pass over the globally score-sorted boxes, with no host round trip per group.
// The IoU uses round-to-nearest intrinsics, which the compiler may not fuse into FMAs: the
// arithmetic is then exactly that of the CPU kernel and of torchvision's CPU NMS.
#include <cuda_runtime.h>

#include "cuda_launch.h"

namespace assigndet {
namespace {

constexpr int kTile = static_cast<int>(kNmsTile);
constexpr int kReduceThreads = 512;
// "removed" bits kept in shared memory up to this many words (plus the diag tile, under 48 KiB).
constexpr int64_t kMaxSharedWords = 6000;

__device__ inline float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ inline float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ inline float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ inline double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ inline double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ inline double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ inline double div_rn(double a, double b) { return __ddiv_rn(a, b); }

template <typename T>
__device__ inline T iou_of(const T* a, T area_a, const T* b) {
  const T w = max(T(0), sub_rn(min(a[2], b[2]), max(a[0], b[0])));
  const T h = max(T(0), sub_rn(min(a[3], b[3]), max(a[1], b[1])));
  const T inter = mul_rn(w, h);
  const T area_b = mul_rn(sub_rn(b[2], b[0]), sub_rn(b[3], b[1]));
  return div_rn(inter, sub_rn(add_rn(area_a, area_b), inter));
}

// boxes: [n, 4] sorted by decreasing score; group: [n] or nullptr; mask: [n, col_blocks].
template <typename T>
__global__ void nms_mask_kernel(int64_t n, const T* __restrict__ boxes,
                                const int64_t* __restrict__ group, T thr,
                                unsigned long long* __restrict__ mask) {
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (row_block > col_block) {
    return;  // a box only suppresses later ones
  }
  const int64_t col_blocks = (n + kTile - 1) / kTile;
  const int row_size = static_cast<int>(min(n - row_block * kTile, int64_t(kTile)));
  const int col_size = static_cast<int>(min(n - col_block * kTile, int64_t(kTile)));
  __shared__ T tile[kTile * 4];
  __shared__ int64_t tile_group[kTile];
  if (threadIdx.x < col_size) {
    const int64_t j = col_block * kTile + threadIdx.x;
    for (int d = 0; d < 4; ++d) {
      tile[threadIdx.x * 4 + d] = boxes[j * 4 + d];
    }
    tile_group[threadIdx.x] = group != nullptr ? group[j] : 0;
  }
  __syncthreads();
  if (threadIdx.x < row_size) {
    const int64_t i = row_block * kTile + threadIdx.x;
    T box[4];
    for (int d = 0; d < 4; ++d) {
      box[d] = boxes[i * 4 + d];
    }
    const T area = mul_rn(sub_rn(box[2], box[0]), sub_rn(box[3], box[1]));
    const int64_t my_group = group != nullptr ? group[i] : 0;
    unsigned long long bits = 0;
    const int start = row_block == col_block ? threadIdx.x + 1 : 0;
    for (int c = start; c < col_size; ++c) {
      // NaN (0/0 for two zero-area boxes) compares false, as in torchvision.
      if (tile_group[c] == my_group && iou_of(box, area, tile + c * 4) > thr) {
        bits |= 1ULL << c;
      }
    }
    mask[i * col_blocks + col_block] = bits;
  }
}

// One block walks the sorted boxes. Every thread follows the same serial decisions (so the kept
// count is uniform across the block); the OR of a kept box's mask row into the "removed" words of
// later tiles is split across the threads, each word owned by one thread within a tile step.
__global__ void nms_reduce_kernel(int64_t n, const unsigned long long* __restrict__ mask,
                                  const int64_t* __restrict__ order, int64_t max_output,
                                  unsigned long long* removed_global, bool use_shared,
                                  int64_t* __restrict__ keep, int64_t* __restrict__ num_kept) {
  extern __shared__ unsigned long long removed_shared[];
  __shared__ unsigned long long diag[kTile];
  const int64_t col_blocks = (n + kTile - 1) / kTile;
  unsigned long long* removed = use_shared ? removed_shared : removed_global;
  for (int64_t w = threadIdx.x; w < col_blocks; w += blockDim.x) {
    removed[w] = 0;
  }
  int64_t count = 0;
  for (int64_t nb = 0; nb < col_blocks && count < max_output; ++nb) {
    const int64_t base = nb * kTile;
    const int size = static_cast<int>(min(n - base, int64_t(kTile)));
    if (threadIdx.x < size) {
      diag[threadIdx.x] = mask[(base + threadIdx.x) * col_blocks + nb];
    }
    __syncthreads();
    unsigned long long current = removed[nb];
    for (int b = 0; b < size; ++b) {
      if ((current >> b) & 1ULL) {
        continue;
      }
      if (threadIdx.x == 0) {
        keep[count] = order[base + b];
      }
      ++count;
      current |= diag[b];
      const unsigned long long* row = mask + (base + b) * col_blocks;
      for (int64_t w = nb + 1 + threadIdx.x; w < col_blocks; w += blockDim.x) {
        removed[w] |= row[w];
      }
      if (count >= max_output) {
        break;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    *num_kept = count;
  }
}

}  // namespace

cudaError_t nms_cuda_launch(int64_t n, const void* boxes, bool is_double, const int64_t* group,
                            double threshold, int64_t max_output, const int64_t* order,
                            uint64_t* mask, uint64_t* removed, int64_t* keep, int64_t* num_kept,
                            cudaStream_t stream) {
  const int64_t col_blocks = (n + kTile - 1) / kTile;
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
  auto* mask_words = reinterpret_cast<unsigned long long*>(mask);
  if (is_double) {
    nms_mask_kernel<double><<<grid, kTile, 0, stream>>>(n, static_cast<const double*>(boxes), group,
                                                        threshold, mask_words);
  } else {
    nms_mask_kernel<float><<<grid, kTile, 0, stream>>>(n, static_cast<const float*>(boxes), group,
                                                       static_cast<float>(threshold), mask_words);
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    return err;
  }
  const bool use_shared = col_blocks <= kMaxSharedWords;
  const size_t shared_bytes = use_shared ? col_blocks * sizeof(unsigned long long) : 0;
  nms_reduce_kernel<<<1, kReduceThreads, shared_bytes, stream>>>(
      n, mask_words, order, max_output, reinterpret_cast<unsigned long long*>(removed), use_shared,
      keep, num_kept);
  return cudaGetLastError();
}

}  // namespace assigndet
