// Shared helpers of groupwise.kernels.native's C++ kernels: bf16 <-> float32 with c10's
// rounding, a vectorised exp, masks for the tail of a row (AVX-512 where compiled for it).

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#endif

namespace groupwise_native {

using at::Tensor;

template <typename T>
inline float f32(T v) {
  return static_cast<float>(v);
}

template <typename T>
inline T round_to(float v) {
  return static_cast<T>(v);
}

inline void check_cpu(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define GROUPWISE_AVX512 1

using BF = c10::BFloat16;

// bf16 <-> float32 for 16 lanes; to_bf16 rounds to nearest even exactly as c10::BFloat16 does
// (NaN becomes 0x7FC0).
inline __m512 widen(__m256i bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline __m512 load16(const BF* p) {
  return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load16(const BF* p, __mmask16 m) {
  return widen(_mm256_maskz_loadu_epi16(m, p));
}
inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m256i to_bf16(__m512 f) {
  __m512i u = _mm512_castps_si512(f);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}
inline __m512 round16(__m512 f) { return widen(to_bf16(f)); }  // f rounded to bf16, as float
inline void store16(BF* p, __m512 f) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), to_bf16(f));
}
inline void store16(BF* p, __m512 f, __mmask16 m) { _mm256_mask_storeu_epi16(p, m, to_bf16(f)); }
inline void store16(float* p, __m512 f, __mmask16 m) { _mm512_mask_storeu_ps(p, m, f); }

// exp(x) for 16 lanes: Cephes' expf polynomial on x - n ln2, scaled by 2^n (within ~2 ulp of
// expf; 0 below -87.3, so exp(-inf) = 0).
inline __m512 exp16(__m512 x) {
  const __m512 hi = _mm512_set1_ps(88.3762626647949f), lo = _mm512_set1_ps(-87.3365447504f);
  __mmask16 zero = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~zero), _mm512_scalef_ps(p, n));
}
inline __mmask16 tail(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

// 16 scores float(row[v..v+16)) / T of a row of logits (no division unless `divide`), lanes
// outside mask m zero.
template <typename T>
inline __m512 scores16(const T* row, int64_t v, __mmask16 m, __m512 vt, bool divide) {
  __m512 x = load16(row + v, m);
  return divide ? _mm512_div_ps(x, vt) : x;
}

// max_v float(row[v]) / T over a row of `vocab` logits.
template <typename T>
inline float max_score(const T* row, int64_t vocab, __m512 vt, bool divide) {
  __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t v = 0; v < vocab; v += 16) {
    __mmask16 m = tail(vocab - v);
    vmax = _mm512_mask_max_ps(vmax, m, vmax, scores16(row, v, m, vt, divide));
  }
  return _mm512_reduce_max_ps(vmax);
}
#endif

}  // namespace groupwise_native
