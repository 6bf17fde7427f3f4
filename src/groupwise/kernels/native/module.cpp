// The Python module of groupwise.kernels.native: the kernels of decode.cpp, logprobs.cpp and
// layers.cpp.

#include <torch/extension.h>

#include <vector>

namespace groupwise_native {

using at::Tensor;

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);
Tensor silu_mul(const Tensor& gate_up);
Tensor rope_cache(const Tensor& qkv, const Tensor& cos, const Tensor& signed_sin, Tensor& keys,
                  Tensor& values, int64_t slot, int64_t heads, int64_t kv_heads);
Tensor attention(const Tensor& q, const Tensor& keys, const Tensor& values, const Tensor& mask,
                 int64_t n, double scale);
std::vector<Tensor> sample(const Tensor& logits, double temperature, const Tensor& uniform);
std::vector<Tensor> token_logp_rows(const Tensor& raw, const Tensor& targets, double temperature,
                                    bool with_entropy);
void token_logp_grad_rows(Tensor& raw, const Tensor& lse, const Tensor& targets,
                          const Tensor& grad_logp, double temperature);
std::vector<Tensor> rms_norm_forward(const Tensor& x, const Tensor& weight, double eps);
std::vector<Tensor> rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& weight,
                                      const Tensor& rstd);

}  // namespace groupwise_native

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace g = groupwise_native;
  m.doc() = "groupwise's fused CPU kernels";
  m.def("rms_norm", &g::rms_norm, "RMSNorm of x [R, d] with weight [d]");
  m.def("silu_mul", &g::silu_mul, "silu(gate) * up of gate_up [R, 2F]");
  m.def("rope_cache", &g::rope_cache, "rotary q/k of qkv, k and v written into the cache");
  m.def("attention", &g::attention, "single-query grouped attention over n cache slots");
  m.def("sample", &g::sample, "inverse-CDF draw, entropy and log-prob per row");
  m.def("token_logp_rows", &g::token_logp_rows, "log-prob of a target, log-sum-exp, entropy");
  m.def("token_logp_grad_rows", &g::token_logp_grad_rows, "dL/dlogits of the log-probs, in place");
  m.def("rms_norm_forward", &g::rms_norm_forward, "RMSNorm of x [N, H] and its rstd [N]");
  m.def("rms_norm_backward", &g::rms_norm_backward, "dx, dw of RMSNorm");
}
