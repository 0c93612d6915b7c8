// CUDA lincomb: one pass over memory, 128-bit loads/stores when every pointer is 16-byte aligned.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <utility>

#include "pydiff_core.h"

namespace pydiff {
namespace {

template <typename S> struct CudaStorage;
template <> struct CudaStorage<float> {
  using Acc = float;
  __device__ static float load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};
template <> struct CudaStorage<double> {
  using Acc = double;
  __device__ static double load(double v) { return v; }
  __device__ static double store(double v) { return v; }
};
template <> struct CudaStorage<__half> {
  using Acc = float;
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
};
template <> struct CudaStorage<__nv_bfloat16> {
  using Acc = float;
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

constexpr int kThreads = 256;
constexpr int kMaxCoefs = (kLincombMaxOutputs + 1) * (kLincombMaxInputs + 1);

// VEC elements per thread (16 bytes of storage when VEC > 1): grid.y is the batch row, so coefficients are
// uniform across a block and sit in shared memory. N_IN is a template argument: the input values of one vector
// live in registers until every output is written, and sizing that array for the largest count (10 inputs)
// would cost every call the registers of the worst case (130 per thread for 16-bit storage: one block per SM).
template <typename S, int VEC, int N_IN>
__global__ void __launch_bounds__(256) lincomb_kernel(LincombArgs a) {
  using Acc = typename CudaStorage<S>::Acc;
  __shared__ Acc coef[kMaxCoefs];
  constexpr int row = N_IN + 1;
  const int n_coef = (a.n_out + 1) * row;
  const int64_t b = blockIdx.y;
  for (int i = threadIdx.x; i < n_coef; i += blockDim.x)
    coef[i] = static_cast<Acc>(a.coefs[b * a.coef_batch_stride + i]);
  __syncthreads();
  // Read the coefficients through a volatile view: each use is a broadcast shared-memory load, which stops the
  // compiler from hoisting all (n_out + 1) x (n_in + 1) of them into registers for the whole loop.
  const volatile Acc* cv = coef;
  const Acc clamp = static_cast<Acc>(a.clamp);
  const int64_t base = b * a.inner;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * VEC;
  for (int64_t i0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; i0 < a.inner;
       i0 += stride) {
    // Loops over inputs and outputs are unrolled, so the arrays below are indexed by constants and stay in
    // registers (a run-time index would put them in local memory).
    Acc v[N_IN][VEC];
    Acc d[VEC];
    const bool full = i0 + VEC <= a.inner;
#pragma unroll
    for (int j = 0; j < N_IN; ++j) {
      const S* src = static_cast<const S*>(a.in[j]) + base + i0;
      if (VEC > 1 && full) {
        S tmp[VEC];
        *reinterpret_cast<uint4*>(tmp) = *reinterpret_cast<const uint4*>(src);
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[j][k] = CudaStorage<S>::load(tmp[k]);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[j][k] = (i0 + k < a.inner) ? CudaStorage<S>::load(src[k]) : Acc(0);
      }
    }
    // Each coefficient is read once per vector and applied to all its VEC elements.
#pragma unroll
    for (int k = 0; k < VEC; ++k) d[k] = 0;
#pragma unroll
    for (int j = 0; j < N_IN; ++j) {
      const Acc c = cv[j];
#pragma unroll
      for (int k = 0; k < VEC; ++k) d[k] += c * v[j][k];
    }
    if (clamp > Acc(0)) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) d[k] = d[k] < -clamp ? -clamp : (d[k] > clamp ? clamp : d[k]);
    }
#pragma unroll
    for (int o = 0; o < kLincombMaxOutputs; ++o) {
      if (o < a.n_out) {
        const volatile Acc* co = cv + (1 + o) * row;
        Acc acc[VEC];
        const Acc cd = co[N_IN];
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] = cd * d[k];
#pragma unroll
        for (int j = 0; j < N_IN; ++j) {
          const Acc c = co[j];
#pragma unroll
          for (int k = 0; k < VEC; ++k) acc[k] += c * v[j][k];
        }
        S res[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) res[k] = CudaStorage<S>::store(acc[k]);
        S* dst = static_cast<S*>(a.out[o]) + base + i0;
        if (VEC > 1 && full) {
          *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(res);
        } else {
#pragma unroll
          for (int k = 0; k < VEC; ++k) if (i0 + k < a.inner) dst[k] = res[k];
        }
      }
    }
  }
}

// The kernel instantiated for a.n_in inputs (1 .. kLincombMaxInputs, checked by the caller).
template <typename S, int VEC, int... I>
void launch_inputs(const LincombArgs& a, dim3 grid, cudaStream_t stream, std::integer_sequence<int, I...>) {
  ((a.n_in == I + 1 ? (lincomb_kernel<S, VEC, I + 1><<<grid, kThreads, 0, stream>>>(a), 0) : 0), ...);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename S>
int launch(const LincombArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(S);
  bool vec_ok = a.inner % kVec == 0;
  for (int j = 0; j < a.n_in; ++j) vec_ok = vec_ok && aligned16(a.in[j]);
  for (int o = 0; o < a.n_out; ++o) vec_ok = vec_ok && aligned16(a.out[o]);
  const int vec = vec_ok ? kVec : 1;
  int64_t blocks = (a.inner + static_cast<int64_t>(kThreads) * vec - 1) / (static_cast<int64_t>(kThreads) * vec);
  if (blocks > 65535) blocks = 65535;  // grid-stride loop covers the rest
  if (blocks < 1) blocks = 1;
  dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(a.batch));
  if (vec_ok) {
    launch_inputs<S, kVec>(a, grid, stream, std::make_integer_sequence<int, kLincombMaxInputs>{});
  } else {
    launch_inputs<S, 1>(a, grid, stream, std::make_integer_sequence<int, kLincombMaxInputs>{});
  }
  return cudaGetLastError() == cudaSuccess ? kOk : kLaunchFailed;
}

}  // namespace

int lincomb_cuda(const LincombArgs& a, DType dtype, void* stream) {
  if (a.n_in < 1 || a.n_in > kLincombMaxInputs || a.n_out < 1 || a.n_out > kLincombMaxOutputs ||
      a.coefs == nullptr || a.batch < 0 || a.batch > 65535 || a.inner < 0)
    return kBadArgument;
  if (a.batch == 0 || a.inner == 0) return kOk;
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat32: return launch<float>(a, s);
    case DType::kFloat64: return launch<double>(a, s);
    case DType::kFloat16: return launch<__half>(a, s);
    case DType::kBFloat16: return launch<__nv_bfloat16>(a, s);
  }
  return kUnsupportedDType;
}

}  // namespace pydiff
