// Fused CPU kernels for one decode step of a Llama-family model (groupwise.kernels.native).
//
// Each function computes what a short chain of torch operations computes in
// groupwise/kernels/packed_decode.py, in one pass over its data and one call, with the same
// roundings: every intermediate that torch rounds to the tensor's dtype (bf16) is rounded here
// too, and float32 accumulations stay float32. Only the order of float32 sums differs (dot
// products and reductions), so results equal torch's up to the rounding of those sums.
//
// T is the decode dtype (at::BFloat16 or float); F is float, the accumulation type.

#include "simd.h"

namespace groupwise_native {

#ifdef GROUPWISE_AVX512
// The bf16 kernels below with 16 float32 lanes; the same roundings as their scalar twins.

void rms_norm_avx512(const BF* x, const BF* w, BF* y, int64_t rows, int64_t d, float eps) {
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const BF* xr = x + r * d;
      BF* yr = y + r * d;
      __m512 acc = _mm512_setzero_ps();
      for (int64_t i = 0; i < d; i += 16) {
        __m512 v = load16(xr + i, tail(d - i));
        acc = _mm512_fmadd_ps(v, v, acc);
      }
      float sum = _mm512_reduce_add_ps(acc);
      __m512 scale = _mm512_set1_ps(1.f / std::sqrt(sum / static_cast<float>(d) + eps));
      for (int64_t i = 0; i < d; i += 16) {
        __mmask16 m = tail(d - i);
        __m512 normed = round16(_mm512_mul_ps(load16(xr + i, m), scale));
        store16(yr + i, _mm512_mul_ps(normed, load16(w + i, m)), m);
      }
    }
  });
}

void silu_mul_avx512(const BF* in, BF* out, int64_t rows, int64_t width) {
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    const __m512 one = _mm512_set1_ps(1.f);
    for (int64_t r = begin; r < end; ++r) {
      const BF* g = in + r * 2 * width;
      const BF* u = g + width;
      BF* o = out + r * width;
      for (int64_t i = 0; i < width; i += 16) {
        __mmask16 m = tail(width - i);
        __m512 gv = load16(g + i, m);
        __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        __m512 s = round16(_mm512_div_ps(gv, _mm512_add_ps(one, e)));
        store16(o + i, _mm512_mul_ps(s, load16(u + i, m)), m);
      }
    }
  });
}

// One head of D lanes (D a multiple of 32): rotated = (swap(x) * ssin).bf16 + (x * cos).bf16.
inline void rope_head_avx512(const BF* x, const BF* c, const BF* ss, int64_t d, BF* out,
                             int64_t stride) {
  int64_t half = d / 2;
  for (int64_t i = 0; i < d; i += 16) {
    int64_t j = i < half ? i + half : i - half;
    __m512 a = round16(_mm512_mul_ps(load16(x + j), load16(ss + i)));
    __m512 b = round16(_mm512_mul_ps(load16(x + i), load16(c + i)));
    __m256i v = to_bf16(_mm512_add_ps(a, b));
    if (stride == 1) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), v);
    } else {
      alignas(32) uint16_t lanes[16];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
      for (int l = 0; l < 16; ++l) out[(i + l) * stride] = BF(lanes[l], BF::from_bits());
    }
  }
}

// Scores of NH query heads (of one KV head) against n keys (K^T [D, cap]) into acc[h][0..n),
// rounded as torch rounds them; each key vector loaded once for all NH heads. Returns nothing;
// mx[h] gets each head's max.
template <int NH>
void scores_avx512(const BF* q0, int64_t d, const BF* kt, int64_t cap, const BF* mr, int64_t n,
                   float scale, float* acc, int64_t stride, float* mx) {
  const __m512 sc = _mm512_set1_ps(scale);
  __m512 vmax[NH];
  for (int h = 0; h < NH; ++h) vmax[h] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t t0 = 0; t0 < n; t0 += 64) {
    __m512 a[NH][4];
    for (int h = 0; h < NH; ++h)
      for (int b = 0; b < 4; ++b) a[h][b] = _mm512_setzero_ps();
    __mmask16 m[4];
    for (int b = 0; b < 4; ++b) m[b] = t0 + 16 * b < n ? tail(n - t0 - 16 * b) : 0;
    for (int64_t i = 0; i < d; ++i) {
      const BF* krow = kt + i * cap + t0;
      __m512 k[4];
      for (int b = 0; b < 4; ++b) k[b] = load16(krow + 16 * b, m[b]);
      for (int h = 0; h < NH; ++h) {
        __m512 qi = _mm512_set1_ps(static_cast<float>(q0[h * d + i]));
        for (int b = 0; b < 4; ++b) a[h][b] = _mm512_fmadd_ps(qi, k[b], a[h][b]);
      }
    }
    for (int b = 0; b < 4; ++b) {
      if (!m[b]) continue;
      __m512 mask = load16(mr + t0 + 16 * b, m[b]);
      for (int h = 0; h < NH; ++h) {
        __m512 x = round16(_mm512_mul_ps(round16(a[h][b]), sc));
        x = round16(_mm512_add_ps(x, mask));
        _mm512_mask_storeu_ps(acc + h * stride + t0 + 16 * b, m[b], x);
        vmax[h] = _mm512_mask_max_ps(vmax[h], m[b], vmax[h], x);
      }
    }
  }
  for (int h = 0; h < NH; ++h) mx[h] = _mm512_reduce_max_ps(vmax[h]);
}

// softmax of acc[0..n) in place, as float32 probabilities rounded to bf16.
inline void softmax_avx512(float* acc, int64_t n, float mx) {
  __m512 vsum = _mm512_setzero_ps();
  const __m512 vmx = _mm512_set1_ps(mx);
  for (int64_t t = 0; t < n; t += 16) {
    __mmask16 m = tail(n - t);
    __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, acc + t), vmx)));
    _mm512_mask_storeu_ps(acc + t, m, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(vsum));
  for (int64_t t = 0; t < n; t += 16) {
    __mmask16 m = tail(n - t);
    _mm512_mask_storeu_ps(acc + t, m, round16(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, acc + t), inv)));
  }
}

// out[h] = probs[h] V for NH heads, each value vector loaded once for all of them.
template <int NH>
void values_avx512(const float* acc, int64_t stride, const BF* vt, int64_t d, int64_t n, BF* out) {
  for (int64_t i0 = 0; i0 < d; i0 += 64) {
    __m512 o[NH][4];
    for (int h = 0; h < NH; ++h)
      for (int b = 0; b < 4; ++b) o[h][b] = _mm512_setzero_ps();
    __mmask16 m[4];
    for (int b = 0; b < 4; ++b) m[b] = i0 + 16 * b < d ? tail(d - i0 - 16 * b) : 0;
    for (int64_t t = 0; t < n; ++t) {
      const BF* vrow = vt + t * d + i0;
      __m512 v[4];
      for (int b = 0; b < 4; ++b) v[b] = load16(vrow + 16 * b, m[b]);
      for (int h = 0; h < NH; ++h) {
        __m512 p = _mm512_set1_ps(acc[h * stride + t]);
        for (int b = 0; b < 4; ++b) o[h][b] = _mm512_fmadd_ps(p, v[b], o[h][b]);
      }
    }
    for (int h = 0; h < NH; ++h)
      for (int b = 0; b < 4; ++b)
        if (m[b]) store16(out + h * d + i0 + 16 * b, o[h][b], m[b]);
  }
}

template <int NH>
void heads_avx512(const BF* q0, const BF* kt, const BF* vt, const BF* mr, BF* out, int64_t d,
                  int64_t cap, int64_t n, float scale, float* acc, int64_t stride) {
  float mx[NH];
  scores_avx512<NH>(q0, d, kt, cap, mr, n, scale, acc, stride, mx);
  for (int h = 0; h < NH; ++h) softmax_avx512(acc + h * stride, n, mx[h]);
  values_avx512<NH>(acc, stride, vt, d, n, out);
}

void attention_avx512(const BF* qp, const BF* kp, const BF* vp, const BF* mp, BF* op,
                      int64_t rows, int64_t heads, int64_t kv_heads, int64_t d, int64_t cap,
                      int64_t n, float scale) {
  int64_t rep = heads / kv_heads, stride = n + 16;
  at::parallel_for(0, rows * kv_heads, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(static_cast<size_t>(4 * stride));
    for (int64_t unit = begin; unit < end; ++unit) {
      int64_t r = unit / kv_heads, k = unit % kv_heads;
      const BF* kt = kp + unit * d * cap;
      const BF* vt = vp + unit * cap * d;
      const BF* mr = mp + r * cap;
      for (int64_t j = 0; j < rep; j += 4) {  // up to 4 query heads of this KV head at once
        int64_t h = k * rep + j;
        const BF* q0 = qp + (r * heads + h) * d;
        BF* out = op + (r * heads + h) * d;
        switch (std::min<int64_t>(4, rep - j)) {
          case 4: heads_avx512<4>(q0, kt, vt, mr, out, d, cap, n, scale, acc.data(), stride); break;
          case 3: heads_avx512<3>(q0, kt, vt, mr, out, d, cap, n, scale, acc.data(), stride); break;
          case 2: heads_avx512<2>(q0, kt, vt, mr, out, d, cap, n, scale, acc.data(), stride); break;
          default: heads_avx512<1>(q0, kt, vt, mr, out, d, cap, n, scale, acc.data(), stride);
        }
      }
    }
  });
}
#endif

// y = (x32 * rsqrt(mean(x32^2) + eps)).to(T) * w      x [R, d], w [d]
template <typename T>
void rms_norm_kernel(const T* x, const T* w, T* y, int64_t rows, int64_t d, float eps) {
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * d;
      T* yr = y + r * d;
      float sum = 0.f;
      for (int64_t i = 0; i < d; ++i) {
        float v = f32(xr[i]);
        sum += v * v;
      }
      float scale = 1.f / std::sqrt(sum / static_cast<float>(d) + eps);
      for (int64_t i = 0; i < d; ++i) {
        T normed = round_to<T>(f32(xr[i]) * scale);
        yr[i] = round_to<T>(f32(normed) * f32(w[i]));
      }
    }
  });
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_cpu(x, "x");
  check_cpu(weight, "weight");
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 1 && weight.size(0) == x.size(1),
              "rms_norm: x [R, d] and weight [d]");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "rms_norm: x and weight dtypes differ");
  Tensor y = at::empty_like(x);
#ifdef GROUPWISE_AVX512
  if (x.scalar_type() == at::kBFloat16) {
    rms_norm_avx512(x.data_ptr<BF>(), weight.data_ptr<BF>(), y.data_ptr<BF>(), x.size(0),
                    x.size(1), static_cast<float>(eps));
    return y;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "rms_norm", [&] {
    rms_norm_kernel<scalar_t>(x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                              y.data_ptr<scalar_t>(), x.size(0), x.size(1),
                              static_cast<float>(eps));
  });
  return y;
}

// out = silu(gate).to(T) * up     gate_up [R, 2F] = [gate | up]; out [R, F]
Tensor silu_mul(const Tensor& gate_up) {
  check_cpu(gate_up, "gate_up");
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0, "silu_mul: gate_up [R, 2F]");
  int64_t rows = gate_up.size(0), width = gate_up.size(1) / 2;
  Tensor out = at::empty({rows, width}, gate_up.options());
#ifdef GROUPWISE_AVX512
  if (gate_up.scalar_type() == at::kBFloat16) {
    silu_mul_avx512(gate_up.data_ptr<BF>(), out.data_ptr<BF>(), rows, width);
    return out;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gate_up.scalar_type(), "silu_mul", [&] {
    const scalar_t* in = gate_up.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* g = in + r * 2 * width;
        const scalar_t* u = g + width;
        scalar_t* orow = o + r * width;
        for (int64_t i = 0; i < width; ++i) {
          float gv = f32(g[i]);
          scalar_t s = round_to<scalar_t>(gv / (1.f + std::exp(-gv)));
          orow[i] = round_to<scalar_t>(f32(s) * f32(u[i]));
        }
      }
    });
  });
  return out;
}

// Rotary embedding of the query and key heads of qkv [R, (H + 2 K) D], keys and values written
// into the cache at `slot`: keys [R, K, D, cap] (transposed), values [R, K, cap, D].
//   rotated = (swap_halves(x) * signed_sin).to(T) + (x * cos).to(T)    (rounded to T)
// Returns the rotated queries [R, H, D].
Tensor rope_cache(const Tensor& qkv, const Tensor& cos, const Tensor& signed_sin, Tensor& keys,
                  Tensor& values, int64_t slot, int64_t heads, int64_t kv_heads) {
  for (auto* t : {&qkv, &cos, &signed_sin}) check_cpu(*t, "rope_cache input");
  check_cpu(keys, "keys");
  check_cpu(values, "values");
  int64_t rows = qkv.size(0), d = keys.size(2), cap = keys.size(3), half = d / 2;
  TORCH_CHECK(qkv.size(1) == (heads + 2 * kv_heads) * d, "rope_cache: qkv width");
  TORCH_CHECK(cos.numel() == rows * d && signed_sin.numel() == rows * d, "rope_cache: cos/sin");
  TORCH_CHECK(slot >= 0 && slot < cap, "rope_cache: slot outside the cache");
  TORCH_CHECK(values.size(2) == cap && values.size(3) == d, "rope_cache: values layout");
  Tensor q = at::empty({rows, heads, d}, qkv.options());
#ifdef GROUPWISE_AVX512
  if (qkv.scalar_type() == at::kBFloat16 && d % 32 == 0) {
    const BF* in = qkv.data_ptr<BF>();
    const BF* c = cos.data_ptr<BF>();
    const BF* s = signed_sin.data_ptr<BF>();
    BF* qo = q.data_ptr<BF>();
    BF* kc = keys.data_ptr<BF>();
    BF* vc = values.data_ptr<BF>();
    int64_t width = qkv.size(1);
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const BF* row = in + r * width;
        for (int64_t h = 0; h < heads; ++h) {
          rope_head_avx512(row + h * d, c + r * d, s + r * d, d, qo + (r * heads + h) * d, 1);
        }
        for (int64_t k = 0; k < kv_heads; ++k) {
          rope_head_avx512(row + (heads + k) * d, c + r * d, s + r * d, d,
                           kc + (r * kv_heads + k) * d * cap + slot, cap);
          const BF* v = row + (heads + kv_heads + k) * d;
          std::copy(v, v + d, vc + ((r * kv_heads + k) * cap + slot) * d);
        }
      }
    });
    return q;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, qkv.scalar_type(), "rope_cache", [&] {
    const scalar_t* in = qkv.data_ptr<scalar_t>();
    const scalar_t* c = cos.data_ptr<scalar_t>();
    const scalar_t* s = signed_sin.data_ptr<scalar_t>();
    scalar_t* qo = q.data_ptr<scalar_t>();
    scalar_t* kc = keys.data_ptr<scalar_t>();
    scalar_t* vc = values.data_ptr<scalar_t>();
    int64_t width = qkv.size(1);
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = in + r * width;
        const scalar_t* cr = c + r * d;
        const scalar_t* sr = s + r * d;
        for (int64_t h = 0; h < heads + kv_heads; ++h) {
          const scalar_t* x = row + h * d;
          for (int64_t i = 0; i < d; ++i) {
            float swapped = f32(x[i < half ? i + half : i - half]);
            float a = f32(round_to<scalar_t>(swapped * f32(sr[i])));
            float b = f32(round_to<scalar_t>(f32(x[i]) * f32(cr[i])));
            scalar_t v = round_to<scalar_t>(a + b);
            if (h < heads) {
              qo[(r * heads + h) * d + i] = v;
            } else {  // keys[r, k, i, slot]
              kc[((r * kv_heads + (h - heads)) * d + i) * cap + slot] = v;
            }
          }
        }
        const scalar_t* vin = row + (heads + kv_heads) * d;
        for (int64_t k = 0; k < kv_heads; ++k) {  // values[r, k, slot, :]
          std::copy(vin + k * d, vin + (k + 1) * d, vc + ((r * kv_heads + k) * cap + slot) * d);
        }
      }
    });
  });
  return q;
}

// Single-query grouped attention over the first n cache slots, as packed_decode computes it:
//   scores = (q K^T).to(T);  scores = (scores * scale).to(T);  scores = (scores + mask).to(T)
//   probs = softmax_float32(scores).to(T);  out = (probs V).to(T)
// q [R, H, D]; keys [R, K, D, cap]; values [R, K, cap, D]; mask [R, cap] additive (T).
// Returns out [R, H * D].
Tensor attention(const Tensor& q, const Tensor& keys, const Tensor& values, const Tensor& mask,
                 int64_t n, double scale) {
  for (auto* t : {&q, &keys, &values, &mask}) check_cpu(*t, "attention input");
  int64_t rows = q.size(0), heads = q.size(1), d = q.size(2);
  int64_t kv_heads = keys.size(1), cap = keys.size(3);
  TORCH_CHECK(heads % kv_heads == 0, "attention: heads not a multiple of kv heads");
  TORCH_CHECK(n >= 1 && n <= cap && mask.size(1) == cap, "attention: n or mask width");
  int64_t rep = heads / kv_heads;
  Tensor out = at::empty({rows, heads * d}, q.options());
#ifdef GROUPWISE_AVX512
  if (q.scalar_type() == at::kBFloat16) {
    attention_avx512(q.data_ptr<BF>(), keys.data_ptr<BF>(), values.data_ptr<BF>(),
                     mask.data_ptr<BF>(), out.data_ptr<BF>(), rows, heads, kv_heads, d, cap, n,
                     static_cast<float>(scale));
    return out;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "attention", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = keys.data_ptr<scalar_t>();
    const scalar_t* vp = values.data_ptr<scalar_t>();
    const scalar_t* mp = mask.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    float sc = static_cast<float>(scale);
    at::parallel_for(0, rows * kv_heads, 4, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(static_cast<size_t>(n));
      std::vector<float> o(static_cast<size_t>(d));
      for (int64_t unit = begin; unit < end; ++unit) {
        int64_t r = unit / kv_heads, k = unit % kv_heads;
        const scalar_t* kt = kp + unit * d * cap;  // [D, cap]
        const scalar_t* vt = vp + unit * cap * d;  // [cap, D]
        const scalar_t* mr = mp + r * cap;
        for (int64_t j = 0; j < rep; ++j) {
          int64_t h = k * rep + j;
          const scalar_t* qh = qp + (r * heads + h) * d;
          std::fill(acc.begin(), acc.end(), 0.f);
          for (int64_t i = 0; i < d; ++i) {
            float qi = f32(qh[i]);
            const scalar_t* krow = kt + i * cap;
            for (int64_t t = 0; t < n; ++t) acc[t] += qi * f32(krow[t]);
          }
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t t = 0; t < n; ++t) {
            float s = f32(round_to<scalar_t>(f32(round_to<scalar_t>(acc[t])) * sc));
            s = f32(round_to<scalar_t>(s + f32(mr[t])));
            acc[t] = s;
            mx = std::max(mx, s);
          }
          float sum = 0.f;
          for (int64_t t = 0; t < n; ++t) {
            acc[t] = std::exp(acc[t] - mx);
            sum += acc[t];
          }
          std::fill(o.begin(), o.end(), 0.f);
          for (int64_t t = 0; t < n; ++t) {
            float p = f32(round_to<scalar_t>(acc[t] / sum));
            if (p == 0.f) continue;
            const scalar_t* vrow = vt + t * d;
            for (int64_t i = 0; i < d; ++i) o[i] += p * f32(vrow[i]);
          }
          scalar_t* orow = op + r * heads * d + h * d;
          for (int64_t i = 0; i < d; ++i) orow[i] = round_to<scalar_t>(o[i]);
        }
      }
    });
  });
  return out;
}


// One token per row drawn by inverse CDF from softmax(logits / T), as groupwise.rollout.sampling
// draws it without top-k/top-p: s = float(logits) / T (no division at T = 1), e = exp(s - max),
// the first token v with sum_{w <= v} e_w > u * sum_w e_w (searched by blocks of 256), the
// entropy H = log S - sum_v e_v (s_v - max) / S, and log p(token) = s_token - max - log S.
// A target past the last positive entry (rounding) takes the most likely token, as the torch
// sampler's check does. logits [R, V] (bf16 or float32), uniform [R] float32.
std::vector<Tensor> sample(const Tensor& logits, double temperature, const Tensor& uniform) {
  check_cpu(logits, "logits");
  check_cpu(uniform, "uniform");
  TORCH_CHECK(logits.dim() == 2 && uniform.dim() == 1 && uniform.size(0) == logits.size(0),
              "sample: logits [R, V] and uniform [R]");
  TORCH_CHECK(uniform.scalar_type() == at::kFloat, "sample: uniform must be float32");
  TORCH_CHECK(logits.scalar_type() == at::kBFloat16 || logits.scalar_type() == at::kFloat,
              "sample: logits must be bfloat16 or float32");
  TORCH_CHECK(temperature > 0, "sample: temperature must be > 0 (greedy is an argmax)");
  int64_t rows = logits.size(0), vocab = logits.size(1);
  Tensor token = at::empty({rows}, logits.options().dtype(at::kLong));
  Tensor entropy = at::empty({rows}, logits.options().dtype(at::kFloat));
  Tensor logp = at::empty({rows}, logits.options().dtype(at::kFloat));
  const float temp = static_cast<float>(temperature);
  const bool divide = temperature != 1.0;
  const int64_t block = 256, blocks = (vocab + block - 1) / block;
  auto run = [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    const float* up = uniform.data_ptr<float>();
    int64_t* tp = token.data_ptr<int64_t>();
    float* hp = entropy.data_ptr<float>();
    float* gp = logp.data_ptr<float>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> e(static_cast<size_t>(vocab));
      std::vector<float> sums(static_cast<size_t>(blocks));
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = lp + r * vocab;
        auto score = [&](int64_t v) {
          float x = f32(row[v]);
          return divide ? x / temp : x;
        };
#ifdef GROUPWISE_AVX512
        const __m512 vt = _mm512_set1_ps(temp);
        auto load_scores = [&](int64_t v, __mmask16 m) {
          return scores16(row, v, m, vt, divide);
        };
        const float mx = max_score(row, vocab, vt, divide);
        const __m512 vmx = _mm512_set1_ps(mx);
        __m512 vw = _mm512_setzero_ps();
        float total = 0.f;
        for (int64_t b = 0; b < blocks; ++b) {
          __m512 part = _mm512_setzero_ps();
          for (int64_t v = b * block; v < std::min(vocab, (b + 1) * block); v += 16) {
            __mmask16 m = tail(std::min(vocab, (b + 1) * block) - v);
            __m512 x = _mm512_sub_ps(load_scores(v, m), vmx);
            __m512 ev = _mm512_maskz_mov_ps(m, exp16(x));
            _mm512_mask_storeu_ps(e.data() + v, m, ev);
            part = _mm512_add_ps(part, ev);
            __mmask16 pos = _mm512_cmp_ps_mask(ev, _mm512_setzero_ps(), _CMP_GT_OQ);
            vw = _mm512_add_ps(vw, _mm512_maskz_mul_ps(pos, ev, x));
          }
          sums[b] = _mm512_reduce_add_ps(part);
          total += sums[b];
        }
        const float weighted = _mm512_reduce_add_ps(vw);
        auto argmax = [&]() {
          for (int64_t v = 0; v < vocab; ++v) {
            if (score(v) == mx) return v;
          }
          return int64_t{0};
        };
#else
        float mx = -std::numeric_limits<float>::infinity();
        int64_t arg = 0;
        for (int64_t v = 0; v < vocab; ++v) {
          float x = score(v);
          if (x > mx) mx = x, arg = v;
        }
        float total = 0.f, weighted = 0.f;
        for (int64_t b = 0; b < blocks; ++b) {
          float part = 0.f;
          for (int64_t v = b * block; v < std::min(vocab, (b + 1) * block); ++v) {
            float x = score(v) - mx;
            float ev = std::exp(x);
            e[v] = ev;
            part += ev;
            if (ev > 0.f) weighted += ev * x;
          }
          sums[b] = part;
          total += part;
        }
        auto argmax = [&]() { return arg; };
#endif
        hp[r] = std::max(0.f, std::log(total) - weighted / total);
        float target = up[r] * total, run = 0.f;
        int64_t pick = -1;
        for (int64_t b = 0; b < blocks && pick < 0; ++b) {
          if (run + sums[b] <= target) {
            run += sums[b];
            continue;
          }
          for (int64_t v = b * block; v < std::min(vocab, (b + 1) * block); ++v) {
            run += e[v];
            if (run > target && e[v] > 0.f) {
              pick = v;
              break;
            }
          }
          break;
        }
        if (pick < 0) pick = argmax();
        tp[r] = pick;
        gp[r] = score(pick) - mx - std::log(total);
      }
    });
  };
  if (logits.scalar_type() == at::kBFloat16) {
    run(c10::BFloat16{});
  } else {
    run(float{});
  }
  return {token, entropy, logp};
}

}  // namespace groupwise_native
