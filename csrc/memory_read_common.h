// Host-side pieces shared by the CPU and CUDA ops: argument checks and the O((Q+N)C) cosine
// prologue/epilogue, done with ATen so the kernels only ever see zq, mk and mv.
#pragma once

#include <ATen/ATen.h>

#include "memory_math.h"

namespace memae_fused {

// float32 accumulation for float32/16/bfloat16 inputs, float64 for float64.
inline at::ScalarType accumulate_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_forward_args(const at::Tensor& query, const at::Tensor& memory,
                               double shrink_thres, double temperature) {
  TORCH_CHECK(query.dim() == 2 && memory.dim() == 2,
              "memory_read: query and memory must be 2-D, got ", query.sizes(), " and ",
              memory.sizes());
  TORCH_CHECK(query.size(1) == memory.size(1), "memory_read: query has ", query.size(1),
              " channels but memory has ", memory.size(1));
  TORCH_CHECK(memory.size(0) >= 1, "memory_read: memory needs at least one slot");
  TORCH_CHECK(query.scalar_type() == memory.scalar_type(), "memory_read: query is ",
              query.scalar_type(), " but memory is ", memory.scalar_type());
  const auto dtype = query.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              "memory_read: unsupported dtype ", dtype);
  TORCH_CHECK(query.device() == memory.device(), "memory_read: query and memory on different devices");
  TORCH_CHECK(shrink_thres >= 0 && std::isfinite(shrink_thres), "memory_read: bad shrink_thres ",
              shrink_thres);
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature), "memory_read: bad temperature ",
              temperature);
}

inline void check_backward_args(const at::Tensor& grad_read, const at::Tensor& grad_entropy,
                                const at::Tensor& query, const at::Tensor& read,
                                const at::Tensor& entropy, const at::Tensor& stats) {
  const int64_t q = query.size(0);
  TORCH_CHECK(grad_read.sizes() == query.sizes() && read.sizes() == query.sizes(),
              "memory_read_bwd: grad_read and read must have the query's shape");
  TORCH_CHECK(grad_entropy.dim() == 1 && grad_entropy.size(0) == q && entropy.dim() == 1 &&
                  entropy.size(0) == q,
              "memory_read_bwd: grad_entropy and entropy must have shape (Q,)");
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == 3 && stats.size(1) == q,
              "memory_read_bwd: stats must have shape (3, Q)");
  for (const at::Tensor* t : {&grad_read, &grad_entropy, &read, &entropy, &stats}) {
    TORCH_CHECK(t->device() == query.device(), "memory_read_bwd: tensors on different devices");
  }
}

// z / max(|z|, eps) per row, like the reference.
inline at::Tensor normalize_rows(const at::Tensor& x) {
  return x / x.norm(2, {1}, /*keepdim=*/true).clamp_min(math::kNormEps);
}

// Backward of normalize_rows: (g - x_hat (x_hat . g)) / |x| where |x| > eps, else g / eps.
inline at::Tensor normalize_rows_backward(const at::Tensor& x, const at::Tensor& x_hat,
                                          const at::Tensor& grad) {
  const at::Tensor norm = x.norm(2, {1}, /*keepdim=*/true);
  const at::Tensor projected = grad - x_hat * (x_hat * grad).sum(1, /*keepdim=*/true);
  return at::where(norm > math::kNormEps, projected, grad) / norm.clamp_min(math::kNormEps);
}

// The kernels' view of the inputs, in the compute dtype: keys mk and values mv (the same
// tensor for dot similarity).
struct Operands {
  at::Tensor zq, mk, mv;
};

inline Operands make_operands(const at::Tensor& query, const at::Tensor& memory, bool cosine,
                              at::ScalarType dtype) {
  if (!cosine) {
    at::Tensor m = memory.to(dtype).contiguous();
    return Operands{query.to(dtype).contiguous(), m, m};
  }
  // Normalise in the accumulation dtype, then cast to the compute dtype.
  const auto acc = accumulate_type(query.scalar_type());
  return Operands{normalize_rows(query.to(acc)).to(dtype).contiguous(),
                  normalize_rows(memory.to(acc)).to(dtype).contiguous(),
                  memory.to(dtype).contiguous()};
}

}  // namespace memae_fused
