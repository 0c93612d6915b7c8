// CPU pair moments: OpenMP over (batch row x chunk); each chunk sums into kLanes independent float64 lanes so
// the loop vectorizes without reassociating (no -ffast-math), and chunk partials are added in a fixed order so
// the result does not depend on the thread count.
#include <algorithm>
#include <vector>

#include "half_cpu.h"
#include "pydiff_core.h"

namespace pydiff {
namespace {

constexpr int64_t kChunk = 8192;
constexpr int kLanes = 8;

template <typename S>
void chunk_moments(const S* a, const S* b, int64_t len, double* partial) {
  double acc[kMomentsPerRow][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const double x = static_cast<double>(Storage<S>::load(a[i + k]));
      const double y = static_cast<double>(Storage<S>::load(b[i + k]));
      acc[0][k] += x;
      acc[1][k] += y;
      acc[2][k] += x * x;
      acc[3][k] += y * y;
      acc[4][k] += x * y;
    }
  }
  for (; i < len; ++i) {
    const double x = static_cast<double>(Storage<S>::load(a[i]));
    const double y = static_cast<double>(Storage<S>::load(b[i]));
    acc[0][0] += x;
    acc[1][0] += y;
    acc[2][0] += x * x;
    acc[3][0] += y * y;
    acc[4][0] += x * y;
  }
  for (int m = 0; m < kMomentsPerRow; ++m) {
    double s = 0;
    for (int k = 0; k < kLanes; ++k) s += acc[m][k];
    partial[m] = s;
  }
}

template <typename S>
void moments_typed(const S* a, const S* b, int64_t batch, int64_t inner, double* out) {
  const int64_t chunks_per_row = (inner + kChunk - 1) / kChunk;
  const int64_t n_chunks = batch * chunks_per_row;
  std::vector<double> partials(static_cast<size_t>(n_chunks) * kMomentsPerRow);
  double* p = partials.data();
#pragma omp parallel for schedule(static) if (batch * inner > 32768)
  for (int64_t t = 0; t < n_chunks; ++t) {
    const int64_t row = t / chunks_per_row;
    const int64_t start = (t % chunks_per_row) * kChunk;
    const int64_t offset = row * inner + start;
    chunk_moments<S>(a + offset, b + offset, std::min(kChunk, inner - start), p + t * kMomentsPerRow);
  }
  for (int64_t row = 0; row < batch; ++row) {
    double* o = out + row * kMomentsPerRow;
    for (int m = 0; m < kMomentsPerRow; ++m) o[m] = 0;
    for (int64_t c = 0; c < chunks_per_row; ++c)
      for (int m = 0; m < kMomentsPerRow; ++m) o[m] += p[(row * chunks_per_row + c) * kMomentsPerRow + m];
  }
}

}  // namespace

int pair_moments_cpu(const void* a, const void* b, int64_t batch, int64_t inner, double* out, DType dtype) {
  if (batch < 0 || inner < 0 || (out == nullptr && batch > 0)) return kBadArgument;
  if (batch * inner > 0 && (a == nullptr || b == nullptr)) return kBadArgument;
  switch (dtype) {
    case DType::kFloat32:
      moments_typed(static_cast<const float*>(a), static_cast<const float*>(b), batch, inner, out);
      return kOk;
    case DType::kFloat64:
      moments_typed(static_cast<const double*>(a), static_cast<const double*>(b), batch, inner, out);
      return kOk;
    case DType::kFloat16:
      moments_typed(static_cast<const Half*>(a), static_cast<const Half*>(b), batch, inner, out);
      return kOk;
    case DType::kBFloat16:
      moments_typed(static_cast<const BFloat16*>(a), static_cast<const BFloat16*>(b), batch, inner, out);
      return kOk;
  }
  return kUnsupportedDType;
}

}  // namespace pydiff
