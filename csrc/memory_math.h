// Per-element and per-row math of the fused memory read (docs/algorithm.md), shared by the
// CPU kernel and the CUDA kernels so that CPU tests exercise the arithmetic the GPU runs.
// Everything here is scalar and templated on the accumulation type T (float or double).
#pragma once

#include <cmath>
#include <cstdint>

// Forced inline on the host too: the CPU kernel's vectorised loops need every call inlined.
#if defined(__CUDACC__)
#define MEMAE_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define MEMAE_HD inline __attribute__((always_inline))
#else
#define MEMAE_HD inline
#endif

namespace memae_fused {
namespace math {

// The epsilons of the reference (python_ref/memory.py).
constexpr double kShrinkEps = 1e-12;  // relu(u) * w / (|u| + eps)
constexpr double kSumEps = 1e-12;     // h / max(sum h, eps)
constexpr double kLogEps = 1e-12;     // a * log(a + eps)
constexpr double kNormEps = 1e-12;    // z / max(|z|, eps)

#if defined(__CUDACC__)
// Device (and the host side of .cu files, which never runs the row math): CUDA's expf/logf.
MEMAE_HD float exp_(float x) { return ::expf(x); }
MEMAE_HD float log_(float x) { return ::logf(x); }
#else
// Host float32: branch-free Cephes-style polynomials (about 1 ulp), so that the CPU kernel's
// slot loops vectorise; libm's expf/logf are opaque calls that do not.
MEMAE_HD float bits_to_float(int32_t i) { return __builtin_bit_cast(float, i); }
MEMAE_HD int32_t float_to_bits(float f) { return __builtin_bit_cast(int32_t, f); }
MEMAE_HD float exp_(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // n = round(x / ln 2) by the 1.5 * 2^23 trick, r = x - n ln 2 in two parts.
  const float n = (xc * 1.44269504089f + 12582912.0f) - 12582912.0f;
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float result = p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
  return x < -87.0f ? 0.0f : result;
}
// For x > 0 and normal (the callers pass a + eps, h > ~lam).
MEMAE_HD float log_(float x) {
  const int32_t bits = float_to_bits(x);
  float e = static_cast<float>((bits >> 23) - 126);
  float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // x = m 2^e, m in [0.5, 1)
  const bool small = m < 0.707106781f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}
#endif
MEMAE_HD double exp_(double x) { return ::exp(x); }
MEMAE_HD double log_(double x) { return ::log(x); }

// The functions below are branch-free (no division behind a condition), so that the CPU loops
// vectorise and GPU warps do not diverge.
template <typename T>
MEMAE_HD T relu_(T x) {
  return x > T(0) ? x : T(0);
}
template <typename T>
MEMAE_HD T abs_(T x) {
  return x < T(0) ? -x : x;
}

// Hard shrinkage h(w) = relu(w - lam) * w / (|w - lam| + eps), for lam > 0.
template <typename T>
MEMAE_HD T shrink(T w, T lam) {
  const T u = w - lam;
  return relu_(u) * w / (abs_(u) + T(kShrinkEps));
}

// h'(w), exactly as autograd differentiates the expression above (relu'(0) = 0): for u > 0,
// u/(u+eps) + w eps/(u+eps)^2, else 0. It is huge just above lam; tests keep the weights a
// margin away from it.
template <typename T>
MEMAE_HD T shrink_grad(T w, T lam) {
  const T u = w - lam;
  const T d = abs_(u) + T(kShrinkEps);
  const T kept = u > T(0) ? T(1) : T(0);
  return kept * (u / d + w * T(kShrinkEps) / (d * d));
}

// lam = 0 (a = w): the slot's entropy term a log(a + eps) and A' term a^2 / (a + eps).
template <typename T>
MEMAE_HD T entropy_term(T a) {
  return a * log_(a + T(kLogEps));
}
template <typename T>
MEMAE_HD T a_prime_term(T a) {
  return a * a / (a + T(kLogEps));
}

// lam > 0: the slot's h log h (0 for a dropped slot, h = 0).
template <typename T>
MEMAE_HD T h_log_h(T h) {
  return h * log_(h > T(0) ? h : T(1));
}

// -de/da = log(a + eps) + a / (a + eps).
template <typename T>
MEMAE_HD T entropy_grad_term(T a) {
  return log_(a + T(kLogEps)) + a / (a + T(kLogEps));
}

// Per-row results of the forward sweep.
template <typename T>
struct RowResult {
  T entropy;
  T a_prime;  // A' = sum_j a_j^2 / (a_j + eps), saved in stats[2]
  T inv_sum;  // 1 / max(S, eps): read = (sum_j h_j mv_j) * inv_sum
};

// lam = 0 from sum_j w log(w + eps) and sum_j w^2 / (w + eps).
template <typename T>
MEMAE_HD RowResult<T> finish_plain_row(T sum_entropy_terms, T sum_a_prime_terms) {
  return RowResult<T>{-sum_entropy_terms, sum_a_prime_terms, T(1)};
}

// lam > 0 from S = sum h, sum h log h and the number of kept slots. log(a + eps) is expanded
// to first order in eps / a (kept weights are >= ~lam >> eps), so the sweep never needs S
// in advance; a row with S = 0 gives entropy 0 and A' = 0.
template <typename T>
MEMAE_HD RowResult<T> finish_shrunk_row(T sum_h, T sum_h_log_h, T num_kept) {
  const T clamped = sum_h > T(kSumEps) ? sum_h : T(kSumEps);
  const T inv = T(1) / clamped;
  const T kept_frac = sum_h * inv;
  const T eps_kept = T(kLogEps) * kept_frac * num_kept;
  const T entropy = -sum_h_log_h * inv + kept_frac * log_(clamped) - eps_kept;
  return RowResult<T>{entropy, kept_frac - eps_kept, inv};
}

// D = sum_j a_j da_j = g.read + gamma (e - A'), zeroed where max(S, eps) clamps (no gradient
// flows through the sum there). lam = 0 rows have S = 1.
template <typename T>
MEMAE_HD T row_d(T g_dot_read, T gamma, T entropy, T a_prime, T sum_h) {
  return sum_h >= T(kSumEps) ? g_dot_read + gamma * (entropy - a_prime) : T(0);
}

// What the backward knows about a row before it sweeps the slots.
template <typename T>
struct RowGrad {
  T lse;      // L, stats[0]
  T inv_sum;  // 1 / max(S, eps)
  T d;        // row_d(...)
  T gamma;    // de/dloss of the row
};

template <typename T>
MEMAE_HD RowGrad<T> make_row_grad(T lse, T sum_h, T entropy, T a_prime, T gamma, T g_dot_read) {
  const T clamped = sum_h > T(kSumEps) ? sum_h : T(kSumEps);
  return RowGrad<T>{lse, T(1) / clamped, row_d(g_dot_read, gamma, entropy, a_prime, sum_h), gamma};
}

// One slot of the backward: the softmax weight w, the addressing weight a and dloss/dw, from
// the scaled logit s and g.mv_j. Then ds = w (dw - R) with R = sum_j w_j dw_j.
template <typename T>
struct SlotGrad {
  T w, a, dw;
};

// with_entropy = (row.gamma != 0) lets callers skip the log; callers that want the branch
// gone pass compile-time constants for it and for shrinking.
template <typename T>
MEMAE_HD SlotGrad<T> slot_grad(const RowGrad<T>& row, T lam, bool shrinking, bool with_entropy,
                               T s, T g_dot_mv) {
  const T w = exp_(s - row.lse);
  if (!shrinking) {
    const T dw = with_entropy ? g_dot_mv - row.gamma * entropy_grad_term(w) : g_dot_mv;
    return SlotGrad<T>{w, w, dw};
  }
  // A dropped slot has a = 0 and h' = 0, so nothing flows back through it.
  const T a = shrink(w, lam) * row.inv_sum;
  const T da = with_entropy ? g_dot_mv - row.gamma * entropy_grad_term(a) : g_dot_mv;
  return SlotGrad<T>{w, a, shrink_grad(w, lam) * (da - row.d) * row.inv_sum};
}

// R = sum_j w_j dw_j / sum_j w_j. Mathematically sum_j w_j = 1, but w = exp(s - L) with L
// rounded to float32 (|L| can be ~100) carries a row-constant relative error of ~1e-6; dividing
// by the recomputed sum makes sum_j ds_j = 0 exactly, so that error only rescales ds instead of
// leaking R * 1e-6 * sum_j w_j mk_j into d zq.
template <typename T>
MEMAE_HD T finish_r(T sum_w_dw, T sum_w) {
  return sum_w_dw / sum_w;
}

}  // namespace math
}  // namespace memae_fused
