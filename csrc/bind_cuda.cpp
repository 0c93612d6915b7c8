#include <cuda_runtime.h>

#include "bind_common.h"

namespace py = pybind11;

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "pydiff compiled CUDA core (sm_80, sm_90a)";
  m.def(
      "lincomb",
      [](const std::vector<uintptr_t>& inputs, const std::vector<uintptr_t>& outputs, int64_t batch, int64_t inner,
         uintptr_t coefs, int64_t coef_batch_stride, double clamp, int dtype, uintptr_t stream) {
        auto a = pydiff::make_lincomb_args(inputs, outputs, batch, inner, coefs, coef_batch_stride, clamp);
        pydiff::check_status(pydiff::lincomb_cuda(a, pydiff::to_dtype(dtype), reinterpret_cast<void*>(stream)),
                             "lincomb_cuda");
      },
      py::arg("inputs"), py::arg("outputs"), py::arg("batch"), py::arg("inner"), py::arg("coefs"),
      py::arg("coef_batch_stride"), py::arg("clamp"), py::arg("dtype"), py::arg("stream"));
  m.def("device_count", []() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
  });
  m.def("runtime_version", []() {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });
}
