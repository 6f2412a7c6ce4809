// Tensor-level side of the CUDA top-one matcher; the kernels are in match_kernels.cu. One host
// synchronization per call, to report bad indices or non-finite values before resolving.
#ifdef WITH_CUDA

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda_launch.h"
#include "ops.h"

namespace assigndet {

std::tuple<at::Tensor, at::Tensor> match_top_one_cuda(const at::Tensor& pred_boxes,
                                                      const at::Tensor& probs,
                                                      const at::Tensor& gt_boxes,
                                                      const at::Tensor& gt_classes,
                                                      const at::Tensor& pair_loc,
                                                      const at::Tensor& pair_gt, double alpha) {
  check_match_inputs(pred_boxes, probs, gt_boxes, gt_classes, pair_loc, pair_gt);
  TORCH_CHECK(pred_boxes.is_cuda(), "match_top_one_cuda: expected CUDA tensors");
  const c10::cuda::CUDAGuard guard(pred_boxes.device());
  const int64_t n = pred_boxes.size(0);
  const int64_t m = gt_boxes.size(0);
  const int64_t k = pair_loc.size(0);
  TORCH_CHECK_VALUE(k < (int64_t(1) << 32) - 1, "match_top_one: at most 2^32 - 2 pairs, got ", k);
  const auto long_opts = pred_boxes.options().dtype(at::kLong);
  at::Tensor matched_loc = at::full({m}, -1, long_opts);
  at::Tensor matched_q = at::zeros({m}, pred_boxes.options().dtype(at::kFloat));
  TORCH_CHECK_VALUE(at::isfinite(gt_boxes).all().item<bool>(),
                    "match_top_one: gt_boxes must be finite, got a NaN or inf");
  if (k == 0 || m == 0) {
    return {matched_loc, matched_q};
  }
  ProbType prob_type;
  switch (probs.scalar_type()) {
    case at::kFloat: prob_type = ProbType::kFloat; break;
    case at::kDouble: prob_type = ProbType::kDouble; break;
    case at::kHalf: prob_type = ProbType::kHalf; break;
    case at::kBFloat16: prob_type = ProbType::kBFloat16; break;
    default: TORCH_CHECK_VALUE(false, "match_top_one: probs must be floating, got ",
                               probs.scalar_type());
  }
  const at::Tensor pred = pred_boxes.to(at::kFloat).contiguous();
  const at::Tensor gt = gt_boxes.to(at::kFloat).contiguous();
  const at::Tensor cls = gt_classes.to(at::kLong).contiguous();
  const at::Tensor pr = probs.contiguous();
  at::Tensor loc = pair_loc.to(at::kLong);
  at::Tensor gti = pair_gt.to(at::kLong);
  // Sorting the pairs by (gt, location) makes the position the tie-break rank. Out-of-range indices
  // only permute garbage here; the quality kernel reports them before anything reads through them.
  const at::Tensor perm = std::get<1>((gti * n + loc).sort(/*stable=*/true));
  loc = loc.index_select(0, perm).contiguous();
  gti = gti.index_select(0, perm).contiguous();

  at::Tensor q = at::empty({k}, matched_q.options());
  at::Tensor key = at::empty({k}, long_opts);
  at::Tensor error = at::zeros({1}, pred_boxes.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(pair_quality_launch(
      k, pred.data_ptr<float>(), pr.data_ptr(), prob_type, probs.size(1), gt.data_ptr<float>(),
      cls.data_ptr<int64_t>(), loc.data_ptr<int64_t>(), gti.data_ptr<int64_t>(), n, m,
      static_cast<float>(alpha), q.data_ptr<float>(),
      reinterpret_cast<uint64_t*>(key.data_ptr<int64_t>()), error.data_ptr<int>(), stream));
  const int err = error.item<int>();
  TORCH_CHECK_INDEX(!(err & kPairBadIndex),
                    "match_top_one: pair_loc, pair_gt or gt_classes hold an out-of-range index");
  TORCH_CHECK_VALUE(!(err & kPairNotFinite),
                    "match_top_one: pred_boxes and probs must be finite, got a NaN or inf");

  at::Tensor best_gt = at::empty({m}, long_opts);
  at::Tensor best_loc = at::empty({n}, long_opts);
  at::Tensor gt_pair = at::full({m}, -1, long_opts);
  at::Tensor loc_taken = at::zeros({n}, pred_boxes.options().dtype(at::kByte));
  C10_CUDA_CHECK(resolve_launch(
      k, m, loc.data_ptr<int64_t>(), gti.data_ptr<int64_t>(),
      reinterpret_cast<const uint64_t*>(key.data_ptr<int64_t>()), q.data_ptr<float>(),
      reinterpret_cast<uint64_t*>(best_gt.data_ptr<int64_t>()),
      reinterpret_cast<uint64_t*>(best_loc.data_ptr<int64_t>()), gt_pair.data_ptr<int64_t>(),
      loc_taken.data_ptr<uint8_t>(), matched_loc.data_ptr<int64_t>(), matched_q.data_ptr<float>(),
      stream));
  return {matched_loc, matched_q};
}

}  // namespace assigndet

#endif  // WITH_CUDA
