// CPU kernels of memae_fused::memory_read_fwd / memory_read_bwd.
//
// The queries are cut into blocks of rows; at::parallel_for hands blocks to threads, and a
// thread holds only its block's rows x N scratch (never Q x N). Per block:
//   forward:  logits = zq_b mk^T (BLAS); per row, in place: softmax -> shrink -> h, with the
//             row's L, S, entropy and A' (memory_math.h); read_b = (h mv) / max(S, eps).
//   backward: logits = zq_b mk^T and g_b mv^T (BLAS); per row the slot gradients of
//             memory_math.h give a, w dw and R = sum w dw, then ds = scale w (dw - R) in place;
//             dzq_b = ds mk, and the memory gradient sum_b (ds^T zq_b + a^T g_b) goes into one
//             N x C accumulator per thread, summed at the end (deterministic for a given
//             thread count). With at most one block per thread, the blocks' a and ds are kept
//             instead and the memory gradient is one GEMM at the end.
// float16/bfloat16 inputs run in float32 and are cast back.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "memory_math.h"
#include "memory_read_common.h"

namespace memae_fused {
namespace {

// The row loops are inlined into each ISA variant below so that they get its vector width.
#if defined(__GNUC__)
#define MEMAE_ROW_INLINE inline __attribute__((always_inline))
#else
#define MEMAE_ROW_INLINE inline
#endif

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// At most max_rows rows per block, and at least one block per thread when Q allows it.
int64_t block_rows(int64_t num_queries, int64_t max_rows) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(max_rows, ceil_div(num_queries, threads)));
}

// The forward's blocks hold one rows x N buffer. The backward's hold two, but each of its
// blocks also adds a rank-`rows` update into the thread's N x C memory-gradient accumulators,
// which streams them through memory once per block: taller blocks halve that traffic. On 2
// cores, C = 256, 128 rows against 64 took the backward from 1971 to 1600 ms at
// (Q, N) = (2048, 50000) and from 380 to 319 ms at (1024, 20000); 256 rows gained nothing more.
constexpr int64_t kForwardMaxRows = 64;
constexpr int64_t kBackwardMaxRows = 128;

struct ForwardRow {
  double lse, sum_h;
  math::RowResult<double> result;
};

// Turns one row of raw dot products zq.mk_j into h_j (a_j = w_j when lam = 0), in place.
// The loops are written to vectorise (omp simd; exp_/log_ are inline polynomials for float).
template <typename acc_t>
MEMAE_ROW_INLINE ForwardRow forward_row(acc_t* row, int64_t n, acc_t scale, acc_t lam, bool shrinking) {
  acc_t max_dot = row[0];
#pragma omp simd reduction(max : max_dot)
  for (int64_t j = 0; j < n; ++j) max_dot = row[j] > max_dot ? row[j] : max_dot;
  const acc_t shift = scale * max_dot;  // scale > 0, so this is the largest logit
  acc_t sum_exp = 0;
#pragma omp simd reduction(+ : sum_exp)
  for (int64_t j = 0; j < n; ++j) {
    const acc_t e = math::exp_(scale * row[j] - shift);
    row[j] = e;
    sum_exp += e;
  }
  const double lse = double(shift) + std::log(double(sum_exp));
  const acc_t inv_sum_exp = acc_t(1.0 / double(sum_exp));
  if (!shrinking) {
    acc_t sum_entropy = 0, sum_a_prime = 0;
#pragma omp simd reduction(+ : sum_entropy, sum_a_prime)
    for (int64_t j = 0; j < n; ++j) {
      const acc_t w = row[j] * inv_sum_exp;
      row[j] = w;
      sum_entropy += math::entropy_term(w);
      sum_a_prime += math::a_prime_term(w);
    }
    return ForwardRow{lse, 1.0, math::finish_plain_row<double>(sum_entropy, sum_a_prime)};
  }
  acc_t sum_h = 0, sum_h_log_h = 0, num_kept = 0;
#pragma omp simd reduction(+ : sum_h, sum_h_log_h, num_kept)
  for (int64_t j = 0; j < n; ++j) {
    const acc_t h = math::shrink(row[j] * inv_sum_exp, lam);
    row[j] = h;
    sum_h += h;
    sum_h_log_h += math::h_log_h(h);
    num_kept += h > acc_t(0) ? acc_t(1) : acc_t(0);
  }
  return ForwardRow{lse, double(sum_h),
                    math::finish_shrunk_row<double>(sum_h, sum_h_log_h, num_kept)};
}

// The slot loop of backward_row, with the row's branches fixed at compile time so that it
// vectorises. Returns R (math::finish_r).
template <bool kShrinking, bool kWithEntropy, typename acc_t>
MEMAE_ROW_INLINE acc_t backward_sweep(const math::RowGrad<acc_t>& row, acc_t* att_row,
                                      acc_t* ds_row, acc_t* w_row, int64_t n, acc_t scale,
                                      acc_t lam) {
  acc_t sum_w_dw = 0, sum_w = 0;
#pragma omp simd reduction(+ : sum_w_dw, sum_w)
  for (int64_t j = 0; j < n; ++j) {
    const math::SlotGrad<acc_t> slot =
        math::slot_grad(row, lam, kShrinking, kWithEntropy, scale * att_row[j], ds_row[j]);
    w_row[j] = slot.w;
    att_row[j] = slot.a;
    ds_row[j] = slot.w * slot.dw;
    sum_w_dw += slot.w * slot.dw;
    sum_w += slot.w;
  }
  return math::finish_r(sum_w_dw, sum_w);
}

// One row of the backward, in place: logits -> a, g.mv_j -> scale * ds_j. w_row: scratch.
template <typename acc_t>
MEMAE_ROW_INLINE void backward_row(const math::RowGrad<acc_t>& row, acc_t* att_row,
                                   acc_t* ds_row, acc_t* w_row, int64_t n, acc_t scale,
                                   acc_t lam, bool shrinking) {
  const bool with_entropy = row.gamma != acc_t(0);
  acc_t r_sum;
  if (shrinking) {
    r_sum = with_entropy ? backward_sweep<true, true>(row, att_row, ds_row, w_row, n, scale, lam)
                         : backward_sweep<true, false>(row, att_row, ds_row, w_row, n, scale, lam);
  } else {
    r_sum = with_entropy ? backward_sweep<false, true>(row, att_row, ds_row, w_row, n, scale, lam)
                         : backward_sweep<false, false>(row, att_row, ds_row, w_row, n, scale, lam);
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) ds_row[j] = scale * (ds_row[j] - w_row[j] * r_sum);
}

// The float rows are compiled for AVX-512, AVX2 and baseline x86-64 and picked at run
// time (the extension is built without -march flags).
#if defined(__GNUC__) && defined(__x86_64__)
#define MEMAE_ISA_VARIANTS 1
#define MEMAE_VARIANT(isa_name, target_spec)                                                  \
  target_spec ForwardRow forward_row_##isa_name(float* row, int64_t n, float scale, float lam, \
                                               bool shrinking) {                            \
    return forward_row<float>(row, n, scale, lam, shrinking);                                \
  }                                                                                          \
  target_spec void backward_row_##isa_name(const math::RowGrad<float>& row, float* att_row,  \
                                           float* ds_row, float* w_row, int64_t n,           \
                                           float scale, float lam, bool shrinking) {         \
    backward_row<float>(row, att_row, ds_row, w_row, n, scale, lam, shrinking);              \
  }
MEMAE_VARIANT(avx512, __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"))))
MEMAE_VARIANT(avx2, __attribute__((target("avx2,fma"))))
#undef MEMAE_VARIANT

enum class Isa { kBase, kAvx2, kAvx512 };

Isa cpu_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
      return Isa::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kBase;
  }();
  return isa;
}
#endif

template <typename acc_t>
ForwardRow forward_row_best(acc_t* row, int64_t n, acc_t scale, acc_t lam, bool shrinking) {
#ifdef MEMAE_ISA_VARIANTS
  if constexpr (std::is_same_v<acc_t, float>) {
    switch (cpu_isa()) {
      case Isa::kAvx512: return forward_row_avx512(row, n, scale, lam, shrinking);
      case Isa::kAvx2: return forward_row_avx2(row, n, scale, lam, shrinking);
      default: break;
    }
  }
#endif
  return forward_row<acc_t>(row, n, scale, lam, shrinking);
}

template <typename acc_t>
void backward_row_best(const math::RowGrad<acc_t>& row, acc_t* att_row, acc_t* ds_row,
                       acc_t* w_row, int64_t n, acc_t scale, acc_t lam, bool shrinking) {
#ifdef MEMAE_ISA_VARIANTS
  if constexpr (std::is_same_v<acc_t, float>) {
    switch (cpu_isa()) {
      case Isa::kAvx512:
        return backward_row_avx512(row, att_row, ds_row, w_row, n, scale, lam, shrinking);
      case Isa::kAvx2:
        return backward_row_avx2(row, att_row, ds_row, w_row, n, scale, lam, shrinking);
      default: break;
    }
  }
#endif
  backward_row<acc_t>(row, att_row, ds_row, w_row, n, scale, lam, shrinking);
}

// read (Q x C), entropy (Q), stats (3 x Q): preallocated, acc_t.
template <typename acc_t>
void forward_kernel(const Operands& ops, double shrink_thres, double scale_d, at::Tensor& read,
                    at::Tensor& entropy, at::Tensor& stats) {
  const int64_t num_queries = ops.zq.size(0), num_slots = ops.mk.size(0);
  const int64_t channels = ops.zq.size(1);
  const int64_t rows_per_block = block_rows(num_queries, kForwardMaxRows);
  const int64_t num_blocks = ceil_div(num_queries, rows_per_block);
  const acc_t lam = acc_t(shrink_thres), scale = acc_t(scale_d);
  const bool shrinking = shrink_thres > 0;
  acc_t* entropy_ptr = entropy.data_ptr<acc_t>();
  acc_t* stats_ptr = stats.data_ptr<acc_t>();
  acc_t* read_ptr = read.data_ptr<acc_t>();

  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    // Worker threads do not inherit the caller's dispatch state; keep autograd out of the
    // out= matmuls below.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor scratch = at::empty({rows_per_block, num_slots}, ops.zq.options());
    std::vector<acc_t> inv_sum(rows_per_block);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t q0 = block * rows_per_block;
      const int64_t rows = std::min(rows_per_block, num_queries - q0);
      at::Tensor weights = scratch.narrow(0, 0, rows);
      at::mm_out(weights, ops.zq.narrow(0, q0, rows), ops.mk.t());
      acc_t* weights_ptr = weights.data_ptr<acc_t>();
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t q = q0 + r;
        const ForwardRow row =
            forward_row_best(weights_ptr + r * num_slots, num_slots, scale, lam, shrinking);
        entropy_ptr[q] = acc_t(row.result.entropy);
        stats_ptr[q] = acc_t(row.lse);
        stats_ptr[num_queries + q] = acc_t(row.sum_h);
        stats_ptr[2 * num_queries + q] = acc_t(row.result.a_prime);
        inv_sum[r] = acc_t(row.result.inv_sum);
      }
      at::Tensor read_block = read.narrow(0, q0, rows);
      at::mm_out(read_block, weights, ops.mv);
      if (shrinking) {
        for (int64_t r = 0; r < rows; ++r) {
          acc_t* out = read_ptr + (q0 + r) * channels;
          for (int64_t c = 0; c < channels; ++c) out[c] *= inv_sum[r];
        }
      }
    }
  });
}

// Everything the backward reads, in acc_t and contiguous.
struct BackwardInputs {
  at::Tensor grad_read, grad_entropy, read, entropy, stats;
};

// Fills dzq (Q x C) and the memory gradients. dot: key_grad receives d mk + d mv and
// value_grad is undefined; cosine: key_grad = d mk, value_grad = d mv. All three are
// overwritten (they may come uninitialised).
template <typename acc_t>
void backward_kernel(const Operands& ops, const BackwardInputs& in, double shrink_thres,
                     double scale_d, at::Tensor& dzq, at::Tensor& key_grad,
                     at::Tensor& value_grad) {
  const int64_t num_queries = ops.zq.size(0), num_slots = ops.mk.size(0);
  const int64_t channels = ops.zq.size(1);
  const int64_t rows_per_block = block_rows(num_queries, kBackwardMaxRows);
  const int64_t num_blocks = ceil_div(num_queries, rows_per_block);
  const acc_t lam = acc_t(shrink_thres), scale = acc_t(scale_d);
  const bool shrinking = shrink_thres > 0;
  const bool separate_values = value_grad.defined();

  const acc_t* g_ptr = in.grad_read.data_ptr<acc_t>();
  const acc_t* gamma_ptr = in.grad_entropy.data_ptr<acc_t>();
  const acc_t* read_ptr = in.read.data_ptr<acc_t>();
  const acc_t* entropy_ptr = in.entropy.data_ptr<acc_t>();
  const acc_t* stats_ptr = in.stats.data_ptr<acc_t>();

  // One block: att <- a and ds <- scale * ds (rows x N each), dzq of its rows.
  auto process_block = [&](int64_t block, at::Tensor att, at::Tensor ds,
                           std::vector<acc_t>& w_row) {
    const int64_t q0 = block * rows_per_block;
    const int64_t rows = att.size(0);
    const at::Tensor zq_block = ops.zq.narrow(0, q0, rows);
    at::mm_out(att, zq_block, ops.mk.t());
    at::mm_out(ds, in.grad_read.narrow(0, q0, rows), ops.mv.t());
    acc_t* att_ptr = att.data_ptr<acc_t>();
    acc_t* ds_ptr = ds.data_ptr<acc_t>();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t q = q0 + r;
      double g_dot_read = 0;
      for (int64_t c = 0; c < channels; ++c) {
        g_dot_read += double(g_ptr[q * channels + c]) * double(read_ptr[q * channels + c]);
      }
      const math::RowGrad<acc_t> row = math::make_row_grad<acc_t>(
          stats_ptr[q], stats_ptr[num_queries + q], entropy_ptr[q],
          stats_ptr[2 * num_queries + q], gamma_ptr[q], acc_t(g_dot_read));
      backward_row_best(row, att_ptr + r * num_slots, ds_ptr + r * num_slots, w_row.data(),
                        num_slots, scale, lam, shrinking);
    }
    at::Tensor dzq_block = dzq.narrow(0, q0, rows);
    at::mm_out(dzq_block, ds, ops.mk);
  };
  auto rows_of = [&](int64_t block) {
    return std::min(rows_per_block, num_queries - block * rows_per_block);
  };

  if (num_blocks <= at::get_num_threads()) {
    // Few queries: every thread has at most one block, so the blocks' [a ; ds] together take
    // no more than per-thread scratch would, while an N x C memory-gradient accumulator per
    // thread (the path below) would dominate memory when N is large. Keep [a ; ds] of all rows
    // and form the memory gradient in one GEMM after the row work, on BLAS's threads.
    at::Tensor att_all = at::empty({num_queries, num_slots}, ops.zq.options());
    at::Tensor ds_all = at::empty({num_queries, num_slots}, ops.zq.options());
    at::parallel_for(0, num_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::vector<acc_t> w_row(num_slots);
      for (int64_t block = block_begin; block < block_end; ++block) {
        const int64_t q0 = block * rows_per_block, rows = rows_of(block);
        process_block(block, att_all.narrow(0, q0, rows), ds_all.narrow(0, q0, rows), w_row);
      }
    });
    at::mm_out(key_grad, ds_all.t(), ops.zq);
    if (separate_values) {
      at::mm_out(value_grad, att_all.t(), in.grad_read);
    } else {
      key_grad.addmm_(att_all.t(), in.grad_read);
    }
    return;
  }

  // One memory-gradient accumulator per chunk of blocks; chunk 0 writes the outputs.
  const int64_t num_chunks =
      std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), num_blocks));
  std::vector<at::Tensor> key_acc(num_chunks), value_acc(num_chunks);
  key_acc[0] = key_grad.zero_();
  value_acc[0] = separate_values ? value_grad.zero_() : value_grad;
  for (int64_t chunk = 1; chunk < num_chunks; ++chunk) {
    key_acc[chunk] = at::zeros_like(key_grad);
    if (separate_values) value_acc[chunk] = at::zeros_like(value_grad);
  }

  at::parallel_for(0, num_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    // [a ; ds] of a block, stacked so that the dot case needs a single memory-gradient GEMM.
    at::Tensor scratch = at::empty({2 * rows_per_block * num_slots}, ops.zq.options());
    at::Tensor stacked_rhs;  // [g_b ; zq_b] for that GEMM
    if (!separate_values) stacked_rhs = at::empty({2 * rows_per_block, channels}, ops.zq.options());
    std::vector<acc_t> w_row(num_slots);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      const int64_t block_begin = chunk * num_blocks / num_chunks;
      const int64_t block_end = (chunk + 1) * num_blocks / num_chunks;
      for (int64_t block = block_begin; block < block_end; ++block) {
        const int64_t q0 = block * rows_per_block, rows = rows_of(block);
        at::Tensor stacked = scratch.narrow(0, 0, 2 * rows * num_slots).view({2 * rows, num_slots});
        at::Tensor att = stacked.narrow(0, 0, rows);
        at::Tensor ds = stacked.narrow(0, rows, rows);
        process_block(block, att, ds, w_row);
        const at::Tensor zq_block = ops.zq.narrow(0, q0, rows);
        const at::Tensor g_block = in.grad_read.narrow(0, q0, rows);
        if (separate_values) {
          key_acc[chunk].addmm_(ds.t(), zq_block);
          value_acc[chunk].addmm_(att.t(), g_block);
        } else {
          at::Tensor rhs = stacked_rhs.narrow(0, 0, 2 * rows);
          rhs.narrow(0, 0, rows).copy_(g_block);
          rhs.narrow(0, rows, rows).copy_(zq_block);
          key_acc[chunk].addmm_(stacked.t(), rhs);
        }
      }
    }
  });
  for (int64_t chunk = 1; chunk < num_chunks; ++chunk) {
    key_grad.add_(key_acc[chunk]);
    if (separate_values) value_grad.add_(value_acc[chunk]);
  }
}

// normalize_rows_backward (memory_read_common.h) plus `extra` when defined, in one pass over
// the rows: at large N the unfused tensor expression streams N x C tensors through memory
// about eight times, which cost as much as the backward's matrix products at Q = 128.
template <typename acc_t>
void normalize_rows_backward_into(const at::Tensor& x, const at::Tensor& x_hat,
                                  const at::Tensor& grad, const at::Tensor& extra,
                                  at::Tensor& out) {
  const int64_t rows = x.size(0), channels = x.size(1);
  const acc_t* x_ptr = x.data_ptr<acc_t>();
  const acc_t* x_hat_ptr = x_hat.data_ptr<acc_t>();
  const acc_t* grad_ptr = grad.data_ptr<acc_t>();
  const acc_t* extra_ptr = extra.defined() ? extra.data_ptr<acc_t>() : nullptr;
  acc_t* out_ptr = out.data_ptr<acc_t>();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t* xr = x_ptr + r * channels;
      const acc_t* hr = x_hat_ptr + r * channels;
      const acc_t* gr = grad_ptr + r * channels;
      acc_t* o = out_ptr + r * channels;
      double sum_sq = 0, dot_d = 0;  // C terms each: summed in double, as cheap as float here
      for (int64_t c = 0; c < channels; ++c) {
        sum_sq += double(xr[c]) * double(xr[c]);
        dot_d += double(hr[c]) * double(gr[c]);
      }
      const acc_t norm = acc_t(std::sqrt(sum_sq)), dot = acc_t(dot_d);
      if (norm > acc_t(math::kNormEps)) {
        for (int64_t c = 0; c < channels; ++c) o[c] = (gr[c] - hr[c] * dot) / norm;
      } else {
        for (int64_t c = 0; c < channels; ++c) o[c] = gr[c] / acc_t(math::kNormEps);
      }
      if (extra_ptr != nullptr) {
        const acc_t* er = extra_ptr + r * channels;
        for (int64_t c = 0; c < channels; ++c) o[c] += er[c];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> memory_read_fwd_cpu(
    const at::Tensor& query, const at::Tensor& memory, double shrink_thres, bool cosine,
    double temperature) {
  check_forward_args(query, memory, shrink_thres, temperature);
  TORCH_CHECK(query.device().is_cpu(), "memory_read_fwd_cpu: expected CPU tensors");
  const auto dtype = query.scalar_type();
  const auto acc = accumulate_type(dtype);
  const int64_t num_queries = query.size(0), channels = query.size(1);
  const auto acc_options = query.options().dtype(acc);
  at::Tensor read = at::empty({num_queries, channels}, acc_options);
  at::Tensor entropy = at::empty({num_queries}, acc_options);
  at::Tensor stats = at::empty({3, num_queries}, acc_options);
  if (num_queries > 0) {
    const Operands ops = make_operands(query, memory, cosine, acc);
    AT_DISPATCH_FLOATING_TYPES(acc, "memory_read_fwd_cpu", [&] {
      forward_kernel<scalar_t>(ops, shrink_thres, 1.0 / temperature, read, entropy, stats);
    });
  }
  return std::make_tuple(read.to(dtype), entropy.to(dtype), stats);
}

std::tuple<at::Tensor, at::Tensor> memory_read_bwd_cpu(
    const at::Tensor& grad_read, const at::Tensor& grad_entropy, const at::Tensor& query,
    const at::Tensor& memory, const at::Tensor& read, const at::Tensor& entropy,
    const at::Tensor& stats, double shrink_thres, bool cosine, double temperature) {
  check_forward_args(query, memory, shrink_thres, temperature);
  check_backward_args(grad_read, grad_entropy, query, read, entropy, stats);
  TORCH_CHECK(query.device().is_cpu(), "memory_read_bwd_cpu: expected CPU tensors");
  const auto dtype = query.scalar_type();
  const auto acc = accumulate_type(dtype);
  const auto to_acc = [&](const at::Tensor& t) { return t.to(acc).contiguous(); };
  at::Tensor dzq = at::empty(query.sizes(), query.options().dtype(acc));
  at::Tensor key_grad = at::empty(memory.sizes(), memory.options().dtype(acc));
  at::Tensor value_grad = cosine ? at::empty_like(key_grad) : at::Tensor();
  const Operands ops = make_operands(query, memory, cosine, acc);
  if (query.size(0) > 0) {
    const BackwardInputs in{to_acc(grad_read), to_acc(grad_entropy), to_acc(read),
                            to_acc(entropy), to_acc(stats)};
    AT_DISPATCH_FLOATING_TYPES(acc, "memory_read_bwd_cpu", [&] {
      backward_kernel<scalar_t>(ops, in, shrink_thres, 1.0 / temperature, dzq, key_grad,
                                value_grad);
    });
  }
  if (query.size(0) == 0) {
    key_grad.zero_();
    if (cosine) value_grad.zero_();
  }
  if (!cosine) return std::make_tuple(dzq.to(dtype), key_grad.to(dtype));
  at::Tensor grad_query = at::empty_like(dzq);
  at::Tensor grad_memory = at::empty_like(key_grad);
  AT_DISPATCH_FLOATING_TYPES(acc, "memory_read_bwd_cpu_normalize", [&] {
    normalize_rows_backward_into<scalar_t>(query.to(acc).contiguous(), ops.zq, dzq, at::Tensor(),
                                           grad_query);
    normalize_rows_backward_into<scalar_t>(memory.to(acc).contiguous(), ops.mk, key_grad,
                                           value_grad, grad_memory);
  });
  return std::make_tuple(grad_query.to(dtype), grad_memory.to(dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(memae_fused, CPU, m) {
  m.impl("memory_read_fwd", &memory_read_fwd_cpu);
  m.impl("memory_read_bwd", &memory_read_bwd_cpu);
}

}  // namespace memae_fused
