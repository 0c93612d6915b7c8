// IEEE fp16 and bfloat16 <-> float32 conversion for the CPU kernels (no compiler extensions needed).
#pragma once
#include <cstdint>
#include <cstring>

namespace pydiff {

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_float(BFloat16 h) { return bits_to_float(static_cast<uint32_t>(h.bits) << 16); }

inline BFloat16 from_float_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{static_cast<uint16_t>((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return BFloat16{static_cast<uint16_t>(u >> 16)};
}

inline float to_float(Half h) {
  const uint32_t sign = (h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu;
  const uint32_t man = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {  // zero or subnormal: value = man * 2^-24
    const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
  }
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

inline Half from_float_half(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return Half{static_cast<uint16_t>(sign | 0x7e00u)};
  if (abs >= 0x477ff000u) return Half{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to inf
  if (abs < 0x38800000u) {  // subnormal half (or zero): round value * 2^24 to nearest even integer
    const float mag = bits_to_float(abs) * 16777216.0f;
    float r = static_cast<float>(static_cast<int32_t>(mag));
    const float frac = mag - r;
    if (frac > 0.5f || (frac == 0.5f && (static_cast<int32_t>(r) & 1))) r += 1.0f;
    return Half{static_cast<uint16_t>(sign | static_cast<uint16_t>(r))};
  }
  uint32_t v = abs - 0x38000000u;  // rebias exponent 127 -> 15 (in the float layout)
  v += 0xfffu + ((v >> 13) & 1u);  // round to nearest even on the 13 dropped bits
  return Half{static_cast<uint16_t>(sign | (v >> 13))};
}

template <typename T> struct Storage;
template <> struct Storage<float> {
  using Acc = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};
template <> struct Storage<double> {
  using Acc = double;
  static double load(double v) { return v; }
  static double store(double v) { return v; }
};
template <> struct Storage<Half> {
  using Acc = float;
  static float load(Half v) { return to_float(v); }
  static Half store(float v) { return from_float_half(v); }
};
template <> struct Storage<BFloat16> {
  using Acc = float;
  static float load(BFloat16 v) { return to_float(v); }
  static BFloat16 store(float v) { return from_float_bf16(v); }
};

}  // namespace pydiff
