// The thin pybind11 layer shared by the CPU and CUDA modules: Python passes data pointers (ints) and sizes,
// this layer checks the counts and turns error codes into Python exceptions.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "pydiff_core.h"

namespace pydiff {

inline LincombArgs make_lincomb_args(const std::vector<uintptr_t>& inputs, const std::vector<uintptr_t>& outputs,
                                     int64_t batch, int64_t inner, uintptr_t coefs, int64_t coef_batch_stride,
                                     double clamp) {
  if (inputs.empty() || inputs.size() > static_cast<size_t>(kLincombMaxInputs))
    throw pybind11::value_error("lincomb: inputs must hold 1.." + std::to_string(kLincombMaxInputs) +
                                " pointers, got " + std::to_string(inputs.size()));
  if (outputs.empty() || outputs.size() > static_cast<size_t>(kLincombMaxOutputs))
    throw pybind11::value_error("lincomb: outputs must hold 1.." + std::to_string(kLincombMaxOutputs) +
                                " pointers, got " + std::to_string(outputs.size()));
  if (batch < 0 || inner < 0) throw pybind11::value_error("lincomb: batch and inner must be >= 0");
  LincombArgs a{};
  a.n_in = static_cast<int>(inputs.size());
  a.n_out = static_cast<int>(outputs.size());
  for (int j = 0; j < a.n_in; ++j) a.in[j] = reinterpret_cast<const void*>(inputs[j]);
  for (int o = 0; o < a.n_out; ++o) a.out[o] = reinterpret_cast<void*>(outputs[o]);
  a.batch = batch;
  a.inner = inner;
  a.coefs = reinterpret_cast<const double*>(coefs);
  a.coef_batch_stride = coef_batch_stride;
  a.clamp = clamp;
  return a;
}

inline DType to_dtype(int code) {
  if (code < 0 || code > 3) throw pybind11::value_error("dtype code must be 0..3 (f32, f64, f16, bf16)");
  return static_cast<DType>(code);
}

inline void check_status(int status, const char* op) {
  if (status != kOk) throw std::runtime_error(std::string(op) + " failed: " + status_message(status));
}

}  // namespace pydiff
