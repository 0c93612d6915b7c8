// pydiff compiled core: torch-free kernels. Raw pointers + sizes (+ a stream) in, an error code out.
#pragma once
#include <cstdint>

namespace pydiff {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

enum Status : int {
  kOk = 0,
  kBadArgument = 1,
  kUnsupportedDType = 2,
  kLaunchFailed = 3,
};

inline const char* status_message(int status) {
  switch (status) {
    case kOk: return "ok";
    case kBadArgument: return "bad argument";
    case kUnsupportedDType: return "unsupported dtype";
    case kLaunchFailed: return "kernel launch failed";
    default: return "unknown error";
  }
}

constexpr int kLincombMaxInputs = 10;
constexpr int kLincombMaxOutputs = 6;

// A per-batch linear combination with one clamped intermediate, the shape shared by every fused sampler step
// and by forward noising. With the element tensors laid out as [batch, inner]:
//   d      = clamp(sum_j C[b][0][j] * in_j, -clamp, clamp)          (no clamp when clamp <= 0)
//   out_o  = sum_j C[b][1+o][j] * in_j + C[b][1+o][n_in] * d
// C is float64 [coef_batch][n_out+1][n_in+1] (coef_batch_stride 0 when every batch row shares it); accumulation
// is in float32 for 16/32-bit storage and float64 for float64 storage. Outputs may alias inputs (pointwise).
struct LincombArgs {
  const void* in[kLincombMaxInputs];
  void* out[kLincombMaxOutputs];
  int n_in;
  int n_out;
  int64_t batch;
  int64_t inner;
  const double* coefs;
  int64_t coef_batch_stride;
  double clamp;
};

int lincomb_validate(const LincombArgs& args);
int lincomb_cpu(const LincombArgs& args, DType dtype);
// stream: a cudaStream_t passed as void* so this header needs no CUDA include.
int lincomb_cuda(const LincombArgs& args, DType dtype, void* stream);

// Per-batch raw moments of two tensors laid out as [batch, inner]: out[b] = {sum a, sum b, sum a*a, sum b*b,
// sum a*b} over row b, accumulated in float64 whatever the storage (raw moments, not centred: fine for model
// outputs, whose mean is not large against their spread). out is float64 [batch][5], fully overwritten.
constexpr int kMomentsPerRow = 5;

int pair_moments_cpu(const void* a, const void* b, int64_t batch, int64_t inner, double* out, DType dtype);
// stream: a cudaStream_t passed as void*; out is zeroed on the stream, then accumulated by atomics.
int pair_moments_cuda(const void* a, const void* b, int64_t batch, int64_t inner, double* out, DType dtype,
                      void* stream);

}  // namespace pydiff
