// CUDA pair moments: grid (chunks, batch); each thread sums a grid-strided slice of its row in float64, the block
// reduces with warp shuffles and shared memory, and one thread per block adds the five sums atomically into the
// (zeroed) output. A reduction must finish before anything reads it, so this is its own pass, not fused into the
// step that uses it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "pydiff_core.h"

namespace pydiff {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kItemsPerThread = 8;  // per block visit: enough work per block to amortize its atomics
constexpr int64_t kMaxBlocksPerRow = 1024;

__device__ __forceinline__ double load_double(const float* p, int64_t i) { return static_cast<double>(p[i]); }
__device__ __forceinline__ double load_double(const double* p, int64_t i) { return p[i]; }
__device__ __forceinline__ double load_double(const __half* p, int64_t i) {
  return static_cast<double>(__half2float(p[i]));
}
__device__ __forceinline__ double load_double(const __nv_bfloat16* p, int64_t i) {
  return static_cast<double>(__bfloat162float(p[i]));
}

template <typename S>
__global__ void pair_moments_kernel(const S* __restrict__ a, const S* __restrict__ b, int64_t inner,
                                    double* __restrict__ out) {
  __shared__ double warp_sums[kWarps][kMomentsPerRow];
  const int64_t row = blockIdx.y;
  const S* pa = a + row * inner;
  const S* pb = b + row * inner;
  double acc[kMomentsPerRow] = {0, 0, 0, 0, 0};
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < inner; i += stride) {
    const double x = load_double(pa, i);
    const double y = load_double(pb, i);
    acc[0] += x;
    acc[1] += y;
    acc[2] += x * x;
    acc[3] += y * y;
    acc[4] += x * y;
  }
#pragma unroll
  for (int m = 0; m < kMomentsPerRow; ++m)
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) acc[m] += __shfl_down_sync(0xffffffffu, acc[m], offset);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0)
#pragma unroll
    for (int m = 0; m < kMomentsPerRow; ++m) warp_sums[warp][m] = acc[m];
  __syncthreads();
  if (threadIdx.x < kMomentsPerRow) {
    double s = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += warp_sums[w][threadIdx.x];
    atomicAdd(out + row * kMomentsPerRow + threadIdx.x, s);
  }
}

template <typename S>
int launch(const void* a, const void* b, int64_t batch, int64_t inner, double* out, cudaStream_t stream) {
  int64_t blocks = (inner + static_cast<int64_t>(kThreads) * kItemsPerThread - 1) /
                   (static_cast<int64_t>(kThreads) * kItemsPerThread);
  blocks = blocks < 1 ? 1 : (blocks > kMaxBlocksPerRow ? kMaxBlocksPerRow : blocks);
  dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(batch));
  pair_moments_kernel<S><<<grid, kThreads, 0, stream>>>(static_cast<const S*>(a), static_cast<const S*>(b), inner,
                                                        out);
  return cudaGetLastError() == cudaSuccess ? kOk : kLaunchFailed;
}

}  // namespace

int pair_moments_cuda(const void* a, const void* b, int64_t batch, int64_t inner, double* out, DType dtype,
                      void* stream) {
  if (batch < 0 || batch > 65535 || inner < 0 || (out == nullptr && batch > 0)) return kBadArgument;
  if (batch * inner > 0 && (a == nullptr || b == nullptr)) return kBadArgument;
  if (batch == 0) return kOk;
  auto s = static_cast<cudaStream_t>(stream);
  // zeroed on the stream (a memset node under CUDA-graph capture): the kernel only adds into it
  if (cudaMemsetAsync(out, 0, static_cast<size_t>(batch) * kMomentsPerRow * sizeof(double), s) != cudaSuccess)
    return kLaunchFailed;
  if (inner == 0) return kOk;
  switch (dtype) {
    case DType::kFloat32: return launch<float>(a, b, batch, inner, out, s);
    case DType::kFloat64: return launch<double>(a, b, batch, inner, out, s);
    case DType::kFloat16: return launch<__half>(a, b, batch, inner, out, s);
    case DType::kBFloat16: return launch<__nv_bfloat16>(a, b, batch, inner, out, s);
  }
  return kUnsupportedDType;
}

}  // namespace pydiff
