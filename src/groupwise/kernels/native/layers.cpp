// Training-time RMSNorm of groupwise.kernels.fused, forward and backward, each in one pass over
// its rows instead of chains of small torch kernels (about 8 forward and 12 backward).
//
// The formulas and roundings are those of RMSNormFunction in fused.py: every intermediate torch
// rounds to the tensors' dtype (bf16) is rounded here too; float32 sums (a row's mean, the
// weight gradient's sum over rows) run in another order, so results equal torch's within that
// rounding. (SiLU-times-up was tried here too and was slower than torch's kernels: an exact
// division and exp per element, as in the decode step.)

#include "simd.h"

#include <type_traits>

namespace groupwise_native {

namespace {

void check_pair(const Tensor& a, const Tensor& b, const char* name) {
  check_cpu(a, name);
  check_cpu(b, name);
  TORCH_CHECK(a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type(), name,
              ": inputs must share shape and dtype");
  TORCH_CHECK(a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kFloat, name,
              ": inputs must be bfloat16 or float32");
}

}  // namespace

// y = w * (x32 r).to(T),  r = 1 / sqrt(mean(x32^2) + eps)    x [N, H], w [H]
// Returns {y [N, H] (x's dtype), r [N] float32}.
std::vector<Tensor> rms_norm_forward(const Tensor& x, const Tensor& weight, double eps) {
  check_cpu(x, "x");
  check_cpu(weight, "weight");
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 1 && weight.size(0) == x.size(1),
              "rms_norm_forward: x [N, H] and weight [H]");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "rms_norm_forward: x and weight dtypes differ");
  const int64_t rows = x.size(0), d = x.size(1);
  Tensor y = at::empty_like(x);
  Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T *xp = x.data_ptr<T>(), *wp = weight.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    float* rp = rstd.data_ptr<float>();
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = xp + r * d;
        T* yr = yp + r * d;
        float sum = 0.f;
#ifdef GROUPWISE_AVX512
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < d; i += 16) {
          __m512 v = load16(xr + i, tail(d - i));
          acc = _mm512_fmadd_ps(v, v, acc);
        }
        sum = _mm512_reduce_add_ps(acc);
#else
        for (int64_t i = 0; i < d; ++i) sum += f32(xr[i]) * f32(xr[i]);
#endif
        const float scale = 1.f / std::sqrt(sum / static_cast<float>(d) + static_cast<float>(eps));
        rp[r] = scale;
        int64_t i = 0;
#ifdef GROUPWISE_AVX512
        if constexpr (std::is_same_v<T, c10::BFloat16>) {
          const __m512 vs = _mm512_set1_ps(scale);
          for (; i < d; i += 16) {
            __mmask16 m = tail(d - i);
            __m512 normed = round16(_mm512_mul_ps(load16(xr + i, m), vs));
            store16(yr + i, _mm512_mul_ps(normed, load16(wp + i, m)), m);
          }
        }
#endif
        for (; i < d; ++i) {
          T normed = round_to<T>(f32(xr[i]) * scale);
          yr[i] = round_to<T>(f32(normed) * f32(wp[i]));
        }
      }
    });
  };
  if (x.scalar_type() == at::kBFloat16) {
    run(c10::BFloat16{});
  } else {
    run(float{});
  }
  return {y, rstd};
}

// The backward of rms_norm_forward for dy [N, H] (x's dtype), with xh = x32 r:
//   g = float((dy w).to(T)),  dx = (r (g - xh mean(g xh))).to(T)
//   dw = (sum over rows of float(dy) float(xh.to(T))).to(T)
// Returns {dx [N, H], dw [H]} (dw summed over rows in a fixed order, whatever the threads).
std::vector<Tensor> rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                      const Tensor& rstd) {
  check_pair(dy, x, "rms_norm_backward");
  check_cpu(weight, "weight");
  check_cpu(rstd, "rstd");
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 1 && weight.size(0) == x.size(1) &&
                  weight.scalar_type() == x.scalar_type(),
              "rms_norm_backward: x [N, H] and weight [H] of x's dtype");
  TORCH_CHECK(rstd.scalar_type() == at::kFloat && rstd.numel() == x.size(0),
              "rms_norm_backward: rstd must be float32 [N]");
  const int64_t rows = x.size(0), d = x.size(1);
  Tensor dx = at::empty_like(x);
  Tensor dw = at::empty_like(weight);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T *gp = dy.data_ptr<T>(), *xp = x.data_ptr<T>(), *wp = weight.data_ptr<T>();
    const float* rp = rstd.data_ptr<float>();
    T* dxp = dx.data_ptr<T>();
    T* dwp = dw.data_ptr<T>();
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T *dyr = gp + r * d, *xr = xp + r * d;
        T* out = dxp + r * d;
        const float scale = rp[r];
#ifdef GROUPWISE_AVX512
        if constexpr (std::is_same_v<T, c10::BFloat16>) {
          const __m512 vs = _mm512_set1_ps(scale);
          __m512 acc = _mm512_setzero_ps();
          for (int64_t i = 0; i < d; i += 16) {
            __mmask16 m = tail(d - i);
            __m512 g = round16(_mm512_mul_ps(load16(dyr + i, m), load16(wp + i, m)));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(g, _mm512_mul_ps(load16(xr + i, m), vs)));
          }
          const __m512 vmean = _mm512_set1_ps(_mm512_reduce_add_ps(acc) / static_cast<float>(d));
          for (int64_t i = 0; i < d; i += 16) {
            __mmask16 m = tail(d - i);
            __m512 g = round16(_mm512_mul_ps(load16(dyr + i, m), load16(wp + i, m)));
            __m512 xh = _mm512_mul_ps(load16(xr + i, m), vs);
            __m512 centred = _mm512_sub_ps(g, _mm512_mul_ps(xh, vmean));
            store16(out + i, _mm512_mul_ps(vs, centred), m);
          }
          continue;
        }
#endif
        float dot = 0.f;
        for (int64_t i = 0; i < d; ++i) {
          dot += f32(round_to<T>(f32(dyr[i]) * f32(wp[i]))) * (f32(xr[i]) * scale);
        }
        const float mean = dot / static_cast<float>(d);
        for (int64_t i = 0; i < d; ++i) {
          const float g = f32(round_to<T>(f32(dyr[i]) * f32(wp[i])));
          const float centred = g - (f32(xr[i]) * scale) * mean;
          out[i] = round_to<T>(scale * centred);
        }
      }
    });
    // dw: blocks of 16 columns split among threads, each column summed over the rows in order
    const int64_t blocks = (d + 15) / 16;
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t c0 = blk * 16, width = std::min<int64_t>(16, d - c0);
#ifdef GROUPWISE_AVX512
        if constexpr (std::is_same_v<T, c10::BFloat16>) {
          const __mmask16 m = tail(width);
          __m512 acc = _mm512_setzero_ps();
          for (int64_t r = 0; r < rows; ++r) {
            __m512 xh = round16(_mm512_mul_ps(load16(xp + r * d + c0, m), _mm512_set1_ps(rp[r])));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(load16(gp + r * d + c0, m), xh));
          }
          store16(dwp + c0, acc, m);
          continue;
        }
#endif
        for (int64_t i = c0; i < c0 + width; ++i) {
          float acc = 0.f;
          for (int64_t r = 0; r < rows; ++r) {
            acc += f32(gp[r * d + i]) * f32(round_to<T>(f32(xp[r * d + i]) * rp[r]));
          }
          dwp[i] = round_to<T>(acc);
        }
      }
    });
  };
  if (x.scalar_type() == at::kBFloat16) {
    run(c10::BFloat16{});
  } else {
    run(float{});
  }
  return {dx, dw};
}

}  // namespace groupwise_native
