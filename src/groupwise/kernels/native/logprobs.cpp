// The per-row work of groupwise.core.chunked_token_logp's chunk loop (core/logprobs.py), one
// pass per row over the vocabulary instead of a float32 copy of the rows and about six
// vocabulary-wide torch kernels, forward and backward.
//
// The same formulas and roundings as the torch row functions there; float32 sums run in another
// order and exp is the polynomial of simd.h (within 2 ulp of expf), so the results equal torch's
// within float32 rounding (the gradient then rounded to the logits' dtype, as torch rounds it).

#include "simd.h"

namespace groupwise_native {

namespace {

void check_rows(const Tensor& raw, const Tensor& targets, double temperature, const char* name) {
  check_cpu(raw, "raw");
  check_cpu(targets, "targets");
  TORCH_CHECK(raw.dim() == 2 && targets.dim() == 1 && targets.size(0) == raw.size(0), name,
              ": raw [r, V] and targets [r]");
  TORCH_CHECK(targets.scalar_type() == at::kLong, name, ": targets must be int64");
  TORCH_CHECK(raw.scalar_type() == at::kBFloat16 || raw.scalar_type() == at::kFloat, name,
              ": raw must be bfloat16 or float32");
  TORCH_CHECK(temperature > 0, name, ": temperature must be > 0");
  if (targets.numel() > 0) {
    TORCH_CHECK(targets.min().item<int64_t>() >= 0 && targets.max().item<int64_t>() < raw.size(1),
                name, ": targets must be token ids in [0, V)");
  }
}

// Per row of z = float(raw) / T: its max m, s = sum_v exp(z_v - m) and w = sum_v exp(z_v - m)
// (z_v - m) (the entropy's numerator; w is not summed unless `weighted`).
template <typename scalar_t>
void row_sums(const scalar_t* row, int64_t vocab, float temp, bool divide, bool weighted,
              float* mx_out, float* total_out, float* w_out) {
#ifdef GROUPWISE_AVX512
  const __m512 vt = _mm512_set1_ps(temp);
  auto load_scores = [&](int64_t v, __mmask16 m) { return scores16(row, v, m, vt, divide); };
  const float mx = max_score(row, vocab, vt, divide);
  const __m512 vmx = _mm512_set1_ps(mx);
  __m512 vs = _mm512_setzero_ps(), vw = _mm512_setzero_ps();
  for (int64_t v = 0; v < vocab; v += 16) {
    __mmask16 m = tail(vocab - v);
    __m512 x = _mm512_sub_ps(load_scores(v, m), vmx);
    __m512 ev = _mm512_maskz_mov_ps(m, exp16(x));
    vs = _mm512_add_ps(vs, ev);
    if (weighted) {
      __mmask16 pos = _mm512_cmp_ps_mask(ev, _mm512_setzero_ps(), _CMP_GT_OQ);
      vw = _mm512_add_ps(vw, _mm512_maskz_mul_ps(pos, ev, x));
    }
  }
  *mx_out = mx;
  *total_out = _mm512_reduce_add_ps(vs);
  *w_out = _mm512_reduce_add_ps(vw);
#else
  auto score = [&](int64_t v) { return divide ? f32(row[v]) / temp : f32(row[v]); };
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < vocab; ++v) mx = std::max(mx, score(v));
  float total = 0.f, w = 0.f;
  for (int64_t v = 0; v < vocab; ++v) {
    float x = score(v) - mx, ev = std::exp(x);
    total += ev;
    if (weighted && ev > 0.f) w += ev * x;
  }
  *mx_out = mx;
  *total_out = total;
  *w_out = w;
#endif
}

// exp(x) for one value with the vector code's polynomial, so a row's target entry gets the
// same p as its neighbours.
inline float exp1(float x) {
#ifdef GROUPWISE_AVX512
  return _mm512_cvtss_f32(exp16(_mm512_set1_ps(x)));
#else
  return std::exp(x);
#endif
}

}  // namespace

// raw [r, V] (bf16 or float32, the LM head's logits), targets [r] int64, per row:
//   z = float(raw) / T (no division at T = 1),  m = max_v z_v,  s = sum_v exp(z_v - m)
//   lse = m + log s,  logp = z_y - lse,  entropy = log s - sum_v exp(z_v - m) (z_v - m) / s
// Returns {logp [r], lse [r], entropy [r] ([0] unless with_entropy)}, float32.
std::vector<Tensor> token_logp_rows(const Tensor& raw, const Tensor& targets, double temperature,
                                    bool with_entropy) {
  check_rows(raw, targets, temperature, "token_logp_rows");
  const int64_t rows = raw.size(0), vocab = raw.size(1);
  auto opts = raw.options().dtype(at::kFloat);
  Tensor logp = at::empty({rows}, opts), lse = at::empty({rows}, opts);
  Tensor entropy = at::empty({with_entropy ? rows : 0}, opts);
  const float temp = static_cast<float>(temperature);
  const bool divide = temperature != 1.0;
  auto run = [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* rp = raw.data_ptr<scalar_t>();
    const int64_t* yp = targets.data_ptr<int64_t>();
    float *lp = logp.data_ptr<float>(), *sp = lse.data_ptr<float>();
    float* hp = with_entropy ? entropy.data_ptr<float>() : nullptr;
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = rp + r * vocab;
        float mx, total, w;
        row_sums(row, vocab, temp, divide, with_entropy, &mx, &total, &w);
        const float log_total = std::log(total);
        const float zy = divide ? f32(row[yp[r]]) / temp : f32(row[yp[r]]);
        sp[r] = mx + log_total;
        lp[r] = zy - sp[r];
        if (hp != nullptr) hp[r] = log_total - w / total;
      }
    });
  };
  if (raw.scalar_type() == at::kBFloat16) {
    run(c10::BFloat16{});
  } else {
    run(float{});
  }
  return {logp, lse, entropy};
}

// raw [r, V] overwritten in place with dL / d raw for dL / d logp = g [r] (float32), with the
// forward's lse [r]:   dL / d raw_v = (-g / T) exp(z_v - lse) + [v = y] g / T,
// computed in float32 and rounded to raw's dtype (the entropy's gradient is not included).
void token_logp_grad_rows(Tensor& raw, const Tensor& lse, const Tensor& targets,
                          const Tensor& grad_logp, double temperature) {
  check_rows(raw, targets, temperature, "token_logp_grad_rows");
  check_cpu(lse, "lse");
  check_cpu(grad_logp, "grad_logp");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && grad_logp.scalar_type() == at::kFloat &&
                  lse.numel() == raw.size(0) && grad_logp.numel() == raw.size(0),
              "token_logp_grad_rows: lse and grad_logp must be float32 [r]");
  const int64_t rows = raw.size(0), vocab = raw.size(1);
  const float temp = static_cast<float>(temperature);
  const bool divide = temperature != 1.0;
  auto run = [&](auto tag) {
    using scalar_t = decltype(tag);
    scalar_t* rp = raw.data_ptr<scalar_t>();
    const int64_t* yp = targets.data_ptr<int64_t>();
    const float *sp = lse.data_ptr<float>(), *gp = grad_logp.data_ptr<float>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* row = rp + r * vocab;
        const float c = -gp[r] / temp, hit = gp[r] / temp, shift = sp[r];
        const int64_t y = yp[r];
        const float zy = divide ? f32(row[y]) / temp : f32(row[y]);
        const float at_y = exp1(zy - shift) * c + hit;  // before row[y] is overwritten
#ifdef GROUPWISE_AVX512
        const __m512 vt = _mm512_set1_ps(temp), vs = _mm512_set1_ps(shift),
                     vc = _mm512_set1_ps(c);
        for (int64_t v = 0; v < vocab; v += 16) {
          __mmask16 m = tail(vocab - v);
          __m512 x = load16(row + v, m);
          if (divide) x = _mm512_div_ps(x, vt);
          store16(row + v, _mm512_mul_ps(exp16(_mm512_sub_ps(x, vs)), vc), m);
        }
#else
        for (int64_t v = 0; v < vocab; ++v) {
          float x = divide ? f32(row[v]) / temp : f32(row[v]);
          row[v] = round_to<scalar_t>(std::exp(x - shift) * c);
        }
#endif
        row[y] = round_to<scalar_t>(at_y);
      }
    });
  };
  if (raw.scalar_type() == at::kBFloat16) {
    run(c10::BFloat16{});
  } else {
    run(float{});
  }
}

}  // namespace groupwise_native
