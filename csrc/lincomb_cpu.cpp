// CPU lincomb: tiles of kTile elements; every inner loop is a plain array loop the compiler vectorizes.
#include <algorithm>

#include "half_cpu.h"
#include "pydiff_core.h"

namespace pydiff {

int lincomb_validate(const LincombArgs& a) {
  if (a.n_in < 1 || a.n_in > kLincombMaxInputs) return kBadArgument;
  if (a.n_out < 1 || a.n_out > kLincombMaxOutputs) return kBadArgument;
  if (a.batch < 0 || a.inner < 0 || a.coefs == nullptr) return kBadArgument;
  for (int j = 0; j < a.n_in; ++j) if (a.in[j] == nullptr && a.batch * a.inner > 0) return kBadArgument;
  for (int o = 0; o < a.n_out; ++o) if (a.out[o] == nullptr && a.batch * a.inner > 0) return kBadArgument;
  return kOk;
}

namespace {

constexpr int64_t kTile = 512;

template <typename S>
void lincomb_tile(const LincombArgs& a, const double* c, int64_t base, int64_t len) {
  using Acc = typename Storage<S>::Acc;
  Acc buf[kLincombMaxInputs + 1][kTile];  // inputs, then the intermediate
  const int n_in = a.n_in;
  const int row = n_in + 1;
  for (int j = 0; j < n_in; ++j) {
    const S* src = static_cast<const S*>(a.in[j]) + base;
    for (int64_t i = 0; i < len; ++i) buf[j][i] = Storage<S>::load(src[i]);
  }
  Acc* d = buf[n_in];
  for (int64_t i = 0; i < len; ++i) d[i] = Acc(0);
  for (int j = 0; j < n_in; ++j) {
    const Acc cj = static_cast<Acc>(c[j]);
    if (cj == Acc(0)) continue;
    for (int64_t i = 0; i < len; ++i) d[i] += cj * buf[j][i];
  }
  if (a.clamp > 0) {
    const Acc r = static_cast<Acc>(a.clamp);
    for (int64_t i = 0; i < len; ++i) d[i] = std::min(std::max(d[i], -r), r);
  }
  Acc acc[kTile];
  for (int o = 0; o < a.n_out; ++o) {
    const double* co = c + static_cast<int64_t>(1 + o) * row;
    for (int64_t i = 0; i < len; ++i) acc[i] = Acc(0);
    for (int j = 0; j <= n_in; ++j) {
      const Acc cj = static_cast<Acc>(co[j]);
      if (cj == Acc(0)) continue;
      for (int64_t i = 0; i < len; ++i) acc[i] += cj * buf[j][i];
    }
    S* dst = static_cast<S*>(a.out[o]) + base;
    for (int64_t i = 0; i < len; ++i) dst[i] = Storage<S>::store(acc[i]);
  }
}

template <typename S>
void lincomb_typed(const LincombArgs& a) {
  const int64_t tiles_per_row = (a.inner + kTile - 1) / kTile;
  const int64_t n_tiles = a.batch * tiles_per_row;
#pragma omp parallel for schedule(static) if (n_tiles * kTile > 32768)
  for (int64_t t = 0; t < n_tiles; ++t) {
    const int64_t b = t / tiles_per_row;
    const int64_t start = (t % tiles_per_row) * kTile;
    const int64_t len = std::min(kTile, a.inner - start);
    lincomb_tile<S>(a, a.coefs + b * a.coef_batch_stride, b * a.inner + start, len);
  }
}

}  // namespace

int lincomb_cpu(const LincombArgs& a, DType dtype) {
  if (int s = lincomb_validate(a); s != kOk) return s;
  switch (dtype) {
    case DType::kFloat32: lincomb_typed<float>(a); return kOk;
    case DType::kFloat64: lincomb_typed<double>(a); return kOk;
    case DType::kFloat16: lincomb_typed<Half>(a); return kOk;
    case DType::kBFloat16: lincomb_typed<BFloat16>(a); return kOk;
  }
  return kUnsupportedDType;
}

}  // namespace pydiff
