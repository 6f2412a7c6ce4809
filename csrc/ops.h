// Declarations of the kernels bound in bindings.cpp. Each op has one entry point per device.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <tuple>

namespace assigndet {

// Greedy NMS. `idxs` is either undefined (class-agnostic) or an int64 [N] group id per box;
// boxes of different groups never suppress each other. `max_output` < 0 means no limit.
// Returns int64 [K] indices into `boxes`, by decreasing score (ties: lower index first).
at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                   double iou_threshold, int64_t max_output);

// Greedy one-to-one matching on K candidate (location, gt) pairs; see assigndet/ops/matcher.py.
// Returns (matched_loc int64 [M], matched_q float32 [M]).
std::tuple<at::Tensor, at::Tensor> match_top_one_cpu(const at::Tensor& pred_boxes,
                                                     const at::Tensor& probs,
                                                     const at::Tensor& gt_boxes,
                                                     const at::Tensor& gt_classes,
                                                     const at::Tensor& pair_loc,
                                                     const at::Tensor& pair_gt, double alpha);

#ifdef WITH_CUDA
at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                    double iou_threshold, int64_t max_output);

std::tuple<at::Tensor, at::Tensor> match_top_one_cuda(const at::Tensor& pred_boxes,
                                                      const at::Tensor& probs,
                                                      const at::Tensor& gt_boxes,
                                                      const at::Tensor& gt_classes,
                                                      const at::Tensor& pair_loc,
                                                      const at::Tensor& pair_gt, double alpha);
#endif

// Shape, dtype and device checks shared by the matcher's entry points.
inline void check_match_inputs(const at::Tensor& pred_boxes, const at::Tensor& probs,
                               const at::Tensor& gt_boxes, const at::Tensor& gt_classes,
                               const at::Tensor& pair_loc, const at::Tensor& pair_gt) {
  TORCH_CHECK_VALUE(pred_boxes.dim() == 2 && pred_boxes.size(1) == 4,
                    "match_top_one: pred_boxes must be [N, 4], got ", pred_boxes.sizes());
  TORCH_CHECK_VALUE(probs.dim() == 2 && probs.size(0) == pred_boxes.size(0),
                    "match_top_one: probs must be [N, C] with N = ", pred_boxes.size(0), ", got ",
                    probs.sizes());
  TORCH_CHECK_VALUE(gt_boxes.dim() == 2 && gt_boxes.size(1) == 4,
                    "match_top_one: gt_boxes must be [M, 4], got ", gt_boxes.sizes());
  TORCH_CHECK_VALUE(gt_classes.dim() == 1 && gt_classes.size(0) == gt_boxes.size(0),
                    "match_top_one: gt_classes must be [M] with M = ", gt_boxes.size(0), ", got ",
                    gt_classes.sizes());
  TORCH_CHECK_VALUE(pair_loc.dim() == 1 && pair_gt.dim() == 1 &&
                        pair_loc.size(0) == pair_gt.size(0),
                    "match_top_one: pair_loc and pair_gt must both be [K], got ", pair_loc.sizes(),
                    " and ", pair_gt.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(pred_boxes.scalar_type()) &&
                        at::isFloatingType(probs.scalar_type()) &&
                        at::isFloatingType(gt_boxes.scalar_type()),
                    "match_top_one: pred_boxes, probs and gt_boxes must be floating tensors");
  for (const at::Tensor* t : {&probs, &gt_boxes, &gt_classes, &pair_loc, &pair_gt}) {
    TORCH_CHECK_VALUE(t->device() == pred_boxes.device(),
                      "match_top_one: all inputs must be on ", pred_boxes.device(), ", got one on ",
                      t->device());
  }
}

// The value t' of type T with (v > t) == (v > t') for every v of type T, so that an IoU held in T
// can be compared with a double threshold exactly as torchvision does (float IoU promoted to
// double), without converting inside the inner loop.
template <typename T>
inline T exact_threshold(double t) {
  T r = static_cast<T>(t);
  if (static_cast<double>(r) > t) {
    r = std::nextafter(r, -std::numeric_limits<T>::infinity());
  }
  return r;
}

}  // namespace assigndet
