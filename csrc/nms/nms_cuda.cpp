// Tensor-level side of the CUDA NMS: checks, the score sort and scratch buffers; the kernels are in
// nms_kernels.cu. Two host synchronizations per call: the finiteness check and the kept count.
#ifdef WITH_CUDA

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_launch.h"
#include "ops.h"

namespace assigndet {

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                    double iou_threshold, int64_t max_output) {
  TORCH_CHECK(boxes.is_cuda() && scores.device() == boxes.device(),
              "nms_cuda: expected boxes and scores on the same CUDA device");
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, "nms: boxes must be [N, 4], got ",
                    boxes.sizes());
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == boxes.size(0),
                    "nms: scores must be [N] with N = ", boxes.size(0), ", got ", scores.sizes());
  const bool batched = idxs.defined();
  if (batched) {
    TORCH_CHECK_VALUE(idxs.dim() == 1 && idxs.size(0) == boxes.size(0),
                      "batched_nms: idxs must be [N] with N = ", boxes.size(0), ", got ",
                      idxs.sizes());
  }
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  const auto long_opts = boxes.options().dtype(at::kLong);
  if (n == 0) {
    return at::empty({0}, long_opts);
  }
  TORCH_CHECK_VALUE(at::isfinite(boxes).all().logical_and(at::isfinite(scores).all()).item<bool>(),
                    "nms: boxes and scores must be finite, got a NaN or inf");
  const int64_t col_blocks = (n + kNmsTile - 1) / kNmsTile;
  TORCH_CHECK_VALUE(col_blocks <= 65535, "nms: at most ", 65535 * kNmsTile,
                    " boxes are supported on CUDA, got ", n);

  const at::Tensor order =
      std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const bool is_double = boxes.scalar_type() == at::kDouble;
  const at::Tensor sorted =
      boxes.index_select(0, order).to(is_double ? at::kDouble : at::kFloat).contiguous();
  const at::Tensor group =
      batched ? idxs.index_select(0, order).to(at::kLong).contiguous() : at::Tensor();
  at::Tensor mask = at::empty({n * col_blocks}, long_opts);
  at::Tensor removed = at::empty({col_blocks}, long_opts);
  at::Tensor keep = at::empty({n}, long_opts);
  at::Tensor num_kept = at::empty({1}, long_opts);
  const double threshold = is_double ? exact_threshold<double>(iou_threshold)
                                     : static_cast<double>(exact_threshold<float>(iou_threshold));
  C10_CUDA_CHECK(nms_cuda_launch(
      n, sorted.data_ptr(), is_double, batched ? group.data_ptr<int64_t>() : nullptr, threshold,
      max_output < 0 ? n : max_output, order.data_ptr<int64_t>(),
      reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()),
      reinterpret_cast<uint64_t*>(removed.data_ptr<int64_t>()), keep.data_ptr<int64_t>(),
      num_kept.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream()));
  return keep.narrow(0, 0, num_kept.item<int64_t>());
}

}  // namespace assigndet

#endif  // WITH_CUDA
