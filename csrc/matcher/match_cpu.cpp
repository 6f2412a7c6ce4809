// Top-one matcher on the CPU: quality of the K candidate pairs, then greedy one-to-one resolution
// in decreasing quality. Memory is O(N + M + K); no N x M buffer exists.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "ops.h"

namespace assigndet {
namespace {

// IoU clamped to [0, 1]; two zero-area boxes give 0 rather than 0/0.
inline float pair_iou(const float* a, const float* b) {
  const float w = std::max(0.f, std::min(a[2], b[2]) - std::max(a[0], b[0]));
  const float h = std::max(0.f, std::min(a[3], b[3]) - std::max(a[1], b[1]));
  const float inter = w * h;
  const float uni = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
  return uni > 0.f ? inter / uni : 0.f;
}

template <typename P>
void pair_quality(const float* pred, const P* probs, int64_t num_classes, const float* gt,
                  const int64_t* gt_cls, const int64_t* loc, const int64_t* gti, int64_t n,
                  int64_t m, int64_t k, float alpha, float* q) {
  const float prob_exp = 1.f - alpha;
  at::parallel_for(0, k, 4096, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t i = loc[r];
      const int64_t j = gti[r];
      TORCH_CHECK_INDEX(i >= 0 && i < n, "match_top_one: pair_loc[", r, "] = ", i,
                        " is out of range for ", n, " locations");
      TORCH_CHECK_INDEX(j >= 0 && j < m, "match_top_one: pair_gt[", r, "] = ", j,
                        " is out of range for ", m, " ground-truth boxes");
      const float* box = pred + 4 * i;
      const float p = static_cast<float>(probs[i * num_classes + gt_cls[j]]);
      TORCH_CHECK_VALUE(std::isfinite(p) && std::isfinite(box[0]) && std::isfinite(box[1]) &&
                            std::isfinite(box[2]) && std::isfinite(box[3]),
                        "match_top_one: pred_boxes and probs must be finite, got a NaN or inf "
                        "at location ",
                        i);
      q[r] = std::pow(p, prob_exp) * std::pow(pair_iou(box, gt + 4 * j), alpha);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> match_top_one_cpu(const at::Tensor& pred_boxes,
                                                     const at::Tensor& probs,
                                                     const at::Tensor& gt_boxes,
                                                     const at::Tensor& gt_classes,
                                                     const at::Tensor& pair_loc,
                                                     const at::Tensor& pair_gt, double alpha) {
  check_match_inputs(pred_boxes, probs, gt_boxes, gt_classes, pair_loc, pair_gt);
  TORCH_CHECK(pred_boxes.device().is_cpu(), "match_top_one_cpu: expected CPU tensors");
  const int64_t n = pred_boxes.size(0);
  const int64_t m = gt_boxes.size(0);
  const int64_t num_classes = probs.size(1);
  const int64_t k = pair_loc.size(0);
  const at::Tensor pred = pred_boxes.to(at::kFloat).contiguous();
  const at::Tensor gt = gt_boxes.to(at::kFloat).contiguous();
  const at::Tensor cls = gt_classes.to(at::kLong).contiguous();
  const at::Tensor loc = pair_loc.to(at::kLong).contiguous();
  const at::Tensor gti = pair_gt.to(at::kLong).contiguous();
  const at::Tensor pr = probs.contiguous();

  const float* g = gt.data_ptr<float>();
  const int64_t* c = cls.data_ptr<int64_t>();
  for (int64_t j = 0; j < m; ++j) {
    TORCH_CHECK_VALUE(std::isfinite(g[4 * j]) && std::isfinite(g[4 * j + 1]) &&
                          std::isfinite(g[4 * j + 2]) && std::isfinite(g[4 * j + 3]),
                      "match_top_one: gt_boxes must be finite, got a NaN or inf at box ", j);
    TORCH_CHECK_INDEX(c[j] >= 0 && c[j] < num_classes, "match_top_one: gt_classes[", j,
                      "] = ", c[j], " is out of range for probs with ", num_classes, " classes");
  }

  std::vector<float> q(k);
  const int64_t* li = loc.data_ptr<int64_t>();
  const int64_t* gi = gti.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.scalar_type(), "match_top_one", [&] {
    pair_quality(pred.data_ptr<float>(), pr.data_ptr<scalar_t>(), num_classes, g, c, li, gi, n, m,
                 k, static_cast<float>(alpha), q.data());
  });

  // Decreasing quality; ties go to the lower gt index, then the lower location index.
  std::vector<int64_t> rank(k);
  std::iota(rank.begin(), rank.end(), 0);
  std::sort(rank.begin(), rank.end(), [&](int64_t a, int64_t b) {
    if (q[a] != q[b]) {
      return q[a] > q[b];
    }
    if (gi[a] != gi[b]) {
      return gi[a] < gi[b];
    }
    return li[a] < li[b];
  });

  at::Tensor matched_loc = at::full({m}, -1, loc.options());
  at::Tensor matched_q = at::zeros({m}, pred.options());
  int64_t* ml = matched_loc.data_ptr<int64_t>();
  float* mq = matched_q.data_ptr<float>();
  std::vector<uint8_t> taken(n, 0);
  int64_t remaining = m;
  for (int64_t r = 0; r < k && remaining > 0; ++r) {
    const int64_t p = rank[r];
    if (ml[gi[p]] >= 0 || taken[li[p]]) {
      continue;
    }
    ml[gi[p]] = li[p];
    mq[gi[p]] = q[p];
    taken[li[p]] = 1;
    --remaining;
  }
  return {matched_loc, matched_q};
}

}  // namespace assigndet
