// Greedy NMS on the CPU.
//
// Boxes are sorted by score once and copied into structure-of-arrays form, so the IoU test of one
// candidate against the boxes kept so far is a contiguous loop the compiler vectorizes. A candidate
// is kept iff no earlier kept box overlaps it by more than the threshold, which is the same set as
// torchvision's "each kept box suppresses the later ones" formulation. Groups (classes) are
// independent problems, solved one after the other in the same buffers.
//
// Candidates are taken in blocks: (1) every candidate of a block is tested against the boxes kept
// before the block, (2) the block's survivors are resolved among themselves in score order. Step
// (1) is shared with helper threads, but the calling thread never waits for them: it claims chunks
// of the block itself, and a result a helper has not delivered yet is recomputed. A fork-join
// region would stall for a whole scheduler time slice whenever another process holds a core, which
// on a busy 2-core machine made 2 threads several times slower than 1.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "ops.h"

namespace assigndet {
namespace {

constexpr int64_t kBlock = 256;
// Helpers only start for problems at least this large (starting one costs tens of microseconds).
constexpr int64_t kHelperMinBoxes = 2048;
// Pair tests per claimed chunk: large enough to amortize the atomic, small enough to balance.
constexpr int64_t kChunkPairs = 16384;

template <typename T>
struct BoxArrays {
  std::vector<T> x1, y1, x2, y2, area;
  explicit BoxArrays(int64_t n) : x1(n), y1(n), x2(n), y2(n), area(n) {}
  void copy(int64_t dst, const BoxArrays& src, int64_t i) {
    x1[dst] = src.x1[i];
    y1[dst] = src.y1[i];
    x2[dst] = src.x2[i];
    y2[dst] = src.y2[i];
    area[dst] = src.area[i];
  }
};

// Same arithmetic as torchvision: inter / (area_kept + area_candidate - inter), so 0/0 (two
// zero-area boxes) is NaN and never exceeds the threshold.
template <typename T>
inline bool overlaps_any(const BoxArrays<T>& kept, int64_t begin, int64_t end,
                         const BoxArrays<T>& s, int64_t c, T thr) {
  const T cx1 = s.x1[c], cy1 = s.y1[c], cx2 = s.x2[c], cy2 = s.y2[c], ca = s.area[c];
  const T* kx1 = kept.x1.data();
  const T* ky1 = kept.y1.data();
  const T* kx2 = kept.x2.data();
  const T* ky2 = kept.y2.data();
  const T* ka = kept.area.data();
  constexpr int64_t kChunk = 16;
  int64_t k = begin;
  for (; k + kChunk <= end; k += kChunk) {
    int hit = 0;
    for (int64_t u = k; u < k + kChunk; ++u) {
      const T w = std::max(T(0), std::min(kx2[u], cx2) - std::max(kx1[u], cx1));
      const T h = std::max(T(0), std::min(ky2[u], cy2) - std::max(ky1[u], cy1));
      const T inter = w * h;
      hit |= (inter / (ka[u] + ca - inter)) > thr;
    }
    if (hit) {
      return true;
    }
  }
  for (; k < end; ++k) {
    const T w = std::max(T(0), std::min(kx2[k], cx2) - std::max(kx1[k], cx1));
    const T h = std::max(T(0), std::min(ky2[k], cy2) - std::max(ky1[k], cy1));
    const T inter = w * h;
    if ((inter / (ka[k] + ca - inter)) > thr) {
      return true;
    }
  }
  return false;
}

// Everything a helper may touch, kept alive by shared ownership until the last helper leaves.
template <typename T>
struct NmsState {
  BoxArrays<T> s;     // boxes in sorted order (read-only once filled)
  BoxArrays<T> kept;  // kept boxes; rows below a published kept_end never change afterwards
  T thr;
  // The published block: epoch in the high 32 bits, next unclaimed candidate in the low 32.
  std::atomic<uint64_t> work{0};
  struct Block {
    std::atomic<int64_t> pos{0}, count{0}, kept_begin{0}, kept_end{0}, chunk{1};
  } blocks[2];  // indexed by epoch parity; a stale read is caught by the epoch check of the claim
  // Result of candidate pos + i of block `epoch`: (epoch << 1) | suppressed.
  std::unique_ptr<std::atomic<uint64_t>[]> slots{new std::atomic<uint64_t>[kBlock]};
  std::atomic<bool> stop{false};
  const std::thread::id caller = std::this_thread::get_id();

  NmsState(int64_t n, T threshold) : s(n), kept(n), thr(threshold) {
    for (int64_t i = 0; i < kBlock; ++i) {
      slots[i].store(0, std::memory_order_relaxed);
    }
  }

  // Claims the next chunk of the published block and tests it. Returns false when nothing is left.
  bool run_chunk() {
    uint64_t w = work.load(std::memory_order_acquire);
    const uint64_t epoch = w >> 32;
    const Block& b = blocks[epoch & 1];
    const int64_t next = static_cast<int64_t>(w & 0xFFFFFFFFu);
    const int64_t count = b.count.load(std::memory_order_relaxed);
    if (epoch == 0 || next >= count) {
      return false;
    }
    const int64_t pos = b.pos.load(std::memory_order_relaxed);
    const int64_t kept_begin = b.kept_begin.load(std::memory_order_relaxed);
    const int64_t kept_end = b.kept_end.load(std::memory_order_relaxed);
    const int64_t end = std::min(count, next + b.chunk.load(std::memory_order_relaxed));
    if (!work.compare_exchange_weak(w, (epoch << 32) | static_cast<uint64_t>(end),
                                    std::memory_order_acq_rel)) {
      return true;  // another thread claimed or the block changed; look again
    }
    for (int64_t i = next; i < end; ++i) {
      const bool sup = overlaps_any(kept, kept_begin, kept_end, s, pos + i, thr);
      slots[i].store((epoch << 1) | static_cast<uint64_t>(sup), std::memory_order_release);
    }
    return true;
  }
};

template <typename T>
void help(const std::shared_ptr<NmsState<T>>& st) {
  if (std::this_thread::get_id() == st->caller) {
    return;  // run inline by the pool: the caller would never get to set `stop`
  }
  while (!st->stop.load(std::memory_order_acquire)) {
    if (!st->run_chunk()) {
      std::this_thread::yield();
    }
  }
}

// NMS over the sorted boxes [begin, end) of st->s. Rows [begin, end) of st->kept are this range's
// scratch. Writes the kept sorted positions to out[begin, begin + count) and returns count.
template <typename T>
int64_t nms_range(NmsState<T>& st, uint64_t& epoch, int64_t begin, int64_t end,
                  int64_t max_output, int64_t* out) {
  int64_t num_kept = 0;
  for (int64_t pos = begin; pos < end && num_kept < max_output; pos += kBlock) {
    const int64_t block_end = std::min(end, pos + kBlock);
    const int64_t kept_before = begin + num_kept;
    const bool published = num_kept > 0;
    if (published) {
      ++epoch;
      auto& b = st.blocks[epoch & 1];
      b.pos.store(pos, std::memory_order_relaxed);
      b.count.store(block_end - pos, std::memory_order_relaxed);
      b.kept_begin.store(begin, std::memory_order_relaxed);
      b.kept_end.store(kept_before, std::memory_order_relaxed);
      b.chunk.store(std::max<int64_t>(1, kChunkPairs / num_kept), std::memory_order_relaxed);
      st.work.store(epoch << 32, std::memory_order_release);
      while (st.run_chunk()) {
      }
    }
    for (int64_t c = pos; c < block_end; ++c) {
      bool sup = false;
      if (published) {
        const uint64_t v = st.slots[c - pos].load(std::memory_order_acquire);
        sup = (v >> 1) == epoch ? (v & 1) != 0
                                : overlaps_any(st.kept, begin, kept_before, st.s, c, st.thr);
      }
      if (sup || overlaps_any(st.kept, kept_before, begin + num_kept, st.s, c, st.thr)) {
        continue;
      }
      st.kept.copy(begin + num_kept, st.s, c);
      out[begin + num_kept] = c;
      if (++num_kept == max_output) {
        break;
      }
    }
  }
  return num_kept;
}

template <typename T>
at::Tensor nms_cpu_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                        double iou_threshold, int64_t max_output) {
  const int64_t n = boxes.size(0);
  const T* b = boxes.data_ptr<T>();
  const T* sc = scores.data_ptr<T>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(std::isfinite(sc[i]) && std::isfinite(b[4 * i]) &&
                          std::isfinite(b[4 * i + 1]) && std::isfinite(b[4 * i + 2]) &&
                          std::isfinite(b[4 * i + 3]),
                      "nms: boxes and scores must be finite, got a NaN or inf at box ", i);
  }
  const bool batched = idxs.defined();
  at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  if (batched) {
    // Stable sort by group keeps the score order inside each group.
    order = order.index_select(
        0, std::get<1>(idxs.index_select(0, order).sort(/*stable=*/true, 0, false)));
  }
  const int64_t* ord = order.data_ptr<int64_t>();

  auto st = std::make_shared<NmsState<T>>(n, exact_threshold<T>(iou_threshold));
  BoxArrays<T>& s = st->s;
  std::vector<T> sorted_scores(n);
  for (int64_t p = 0; p < n; ++p) {
    const int64_t i = ord[p];
    s.x1[p] = b[4 * i];
    s.y1[p] = b[4 * i + 1];
    s.x2[p] = b[4 * i + 2];
    s.y2[p] = b[4 * i + 3];
    s.area[p] = (s.x2[p] - s.x1[p]) * (s.y2[p] - s.y1[p]);
    sorted_scores[p] = sc[i];
  }

  // Groups: contiguous runs of equal idxs in sorted order.
  std::vector<int64_t> starts{0};
  if (batched && n > 0) {
    const int64_t* id = idxs.data_ptr<int64_t>();
    for (int64_t p = 1; p < n; ++p) {
      if (id[ord[p]] != id[ord[p - 1]]) {
        starts.push_back(p);
      }
    }
  }
  starts.push_back(n);
  const int64_t num_groups = static_cast<int64_t>(starts.size()) - 1;
  std::vector<int64_t> counts(num_groups, 0);
  std::vector<int64_t> out(n);
  const int64_t limit = max_output < 0 ? n : max_output;

  if (n >= kHelperMinBoxes && !at::in_parallel_region()) {
    for (int t = 1; t < at::get_num_threads(); ++t) {
      at::launch([st] { help(st); });
    }
  }
  uint64_t epoch = 0;
  for (int64_t g = 0; g < num_groups; ++g) {
    counts[g] = nms_range(*st, epoch, starts[g], starts[g + 1], limit, out.data());
  }
  st->stop.store(true, std::memory_order_release);

  std::vector<int64_t> positions;
  for (int64_t g = 0; g < num_groups; ++g) {
    positions.insert(positions.end(), out.begin() + starts[g],
                     out.begin() + starts[g] + counts[g]);
  }
  if (num_groups > 1) {
    std::sort(positions.begin(), positions.end(), [&](int64_t a, int64_t c) {
      if (sorted_scores[a] != sorted_scores[c]) {
        return sorted_scores[a] > sorted_scores[c];
      }
      return ord[a] < ord[c];
    });
  }
  const int64_t num = std::min<int64_t>(limit, static_cast<int64_t>(positions.size()));
  at::Tensor keep = at::empty({num}, boxes.options().dtype(at::kLong));
  int64_t* k = keep.data_ptr<int64_t>();
  for (int64_t r = 0; r < num; ++r) {
    k[r] = ord[positions[r]];
  }
  return keep;
}

}  // namespace

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                   double iou_threshold, int64_t max_output) {
  TORCH_CHECK(boxes.device().is_cpu() && scores.device().is_cpu(), "nms_cpu: expected CPU tensors");
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, "nms: boxes must be [N, 4], got ",
                    boxes.sizes());
  TORCH_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == boxes.size(0),
                    "nms: scores must be [N] with N = ", boxes.size(0), ", got ", scores.sizes());
  at::Tensor idx;
  if (idxs.defined()) {
    TORCH_CHECK_VALUE(idxs.dim() == 1 && idxs.size(0) == boxes.size(0),
                      "batched_nms: idxs must be [N] with N = ", boxes.size(0), ", got ",
                      idxs.sizes());
    idx = idxs.to(at::kLong).contiguous();
  }
  at::Tensor bx = boxes.contiguous();
  at::Tensor sc = scores.to(boxes.scalar_type()).contiguous();
  if (bx.scalar_type() != at::kFloat && bx.scalar_type() != at::kDouble) {
    // fp16 / bf16: IoU in fp32.
    bx = bx.to(at::kFloat);
    sc = sc.to(at::kFloat);
  }
  if (bx.scalar_type() == at::kDouble) {
    return nms_cpu_impl<double>(bx, sc, idx, iou_threshold, max_output);
  }
  return nms_cpu_impl<float>(bx, sc, idx, iou_threshold, max_output);
}

}  // namespace assigndet
