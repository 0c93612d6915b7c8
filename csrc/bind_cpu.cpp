#include "bind_common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C_cpu, m) {
  m.doc() = "pydiff compiled CPU core (C++17, OpenMP)";
  m.def(
      "lincomb",
      [](const std::vector<uintptr_t>& inputs, const std::vector<uintptr_t>& outputs, int64_t batch, int64_t inner,
         uintptr_t coefs, int64_t coef_batch_stride, double clamp, int dtype) {
        auto a = pydiff::make_lincomb_args(inputs, outputs, batch, inner, coefs, coef_batch_stride, clamp);
        int status;
        {
          py::gil_scoped_release release;
          status = pydiff::lincomb_cpu(a, pydiff::to_dtype(dtype));
        }
        pydiff::check_status(status, "lincomb_cpu");
      },
      py::arg("inputs"), py::arg("outputs"), py::arg("batch"), py::arg("inner"), py::arg("coefs"),
      py::arg("coef_batch_stride"), py::arg("clamp"), py::arg("dtype"));
  m.def(
      "pair_moments",
      [](uintptr_t a, uintptr_t b, int64_t batch, int64_t inner, uintptr_t out, int dtype) {
        if (batch < 0 || inner < 0) throw py::value_error("pair_moments: batch and inner must be >= 0");
        int status;
        {
          py::gil_scoped_release release;
          status = pydiff::pair_moments_cpu(reinterpret_cast<const void*>(a), reinterpret_cast<const void*>(b), batch,
                                            inner, reinterpret_cast<double*>(out), pydiff::to_dtype(dtype));
        }
        pydiff::check_status(status, "pair_moments_cpu");
      },
      py::arg("a"), py::arg("b"), py::arg("batch"), py::arg("inner"), py::arg("out"), py::arg("dtype"));
  m.def("openmp_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
  m.attr("max_inputs") = pydiff::kLincombMaxInputs;
  m.attr("max_outputs") = pydiff::kLincombMaxOutputs;
}
