// Python bindings of assigndet._C. Each op is bound once per device it is compiled for, as
// `<op>_<device type>`; assigndet/ops picks the one matching the input's device.
#include <torch/extension.h>

#include "ops.h"

namespace {

at::Tensor nms_binding(const at::Tensor& boxes, const at::Tensor& scores,
                       const c10::optional<at::Tensor>& idxs, double iou_threshold,
                       int64_t max_output,
                       at::Tensor (*impl)(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          double, int64_t)) {
  return impl(boxes, scores, idxs.has_value() ? *idxs : at::Tensor(), iou_threshold, max_output);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Compiled kernels of assigndet.ops (NMS, top-one matcher).";
  m.def(
      "nms_cpu",
      [](const at::Tensor& boxes, const at::Tensor& scores, const c10::optional<at::Tensor>& idxs,
         double iou_threshold, int64_t max_output) {
        return nms_binding(boxes, scores, idxs, iou_threshold, max_output, &assigndet::nms_cpu);
      },
      "Greedy NMS on CPU tensors", py::arg("boxes"), py::arg("scores"), py::arg("idxs"),
      py::arg("iou_threshold"), py::arg("max_output"));
  m.def("match_top_one_cpu", &assigndet::match_top_one_cpu,
        "Greedy top-one matching of candidate pairs on CPU tensors", py::arg("pred_boxes"),
        py::arg("probs"), py::arg("gt_boxes"), py::arg("gt_classes"), py::arg("pair_loc"),
        py::arg("pair_gt"), py::arg("alpha"));
#ifdef WITH_CUDA
  m.def(
      "nms_cuda",
      [](const at::Tensor& boxes, const at::Tensor& scores, const c10::optional<at::Tensor>& idxs,
         double iou_threshold, int64_t max_output) {
        return nms_binding(boxes, scores, idxs, iou_threshold, max_output, &assigndet::nms_cuda);
      },
      "Greedy NMS on CUDA tensors", py::arg("boxes"), py::arg("scores"), py::arg("idxs"),
      py::arg("iou_threshold"), py::arg("max_output"));
  m.def("match_top_one_cuda", &assigndet::match_top_one_cuda,
        "Greedy top-one matching of candidate pairs on CUDA tensors", py::arg("pred_boxes"),
        py::arg("probs"), py::arg("gt_boxes"), py::arg("gt_classes"), py::arg("pair_loc"),
        py::arg("pair_gt"), py::arg("alpha"));
#endif
}
