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
  m.def(
      "pair_moments",
      [](uintptr_t a, uintptr_t b, int64_t batch, int64_t inner, uintptr_t out, int dtype, uintptr_t stream) {
        if (batch < 0 || inner < 0) throw py::value_error("pair_moments: batch and inner must be >= 0");
        if (batch > 65535) throw py::value_error("pair_moments: the CUDA kernel takes at most 65535 batch rows");
        pydiff::check_status(
            pydiff::pair_moments_cuda(reinterpret_cast<const void*>(a), reinterpret_cast<const void*>(b), batch,
                                      inner, reinterpret_cast<double*>(out), pydiff::to_dtype(dtype),
                                      reinterpret_cast<void*>(stream)),
            "pair_moments_cuda");
      },
      py::arg("a"), py::arg("b"), py::arg("batch"), py::arg("inner"), py::arg("out"), py::arg("dtype"),
      py::arg("stream"));
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
