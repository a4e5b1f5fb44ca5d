"""Fused MemAE memory read in Triton: forward, backward and their torch.library wiring.

Algorithm (docs/algorithm.md has the derivation; bench/costs.py counts each plan's matrix
work). With shrinkage (lam > 0), per block of queries the forward sweeps the memory twice:
sweep 1 keeps an online max m and sum l of exp of the logits (online softmax); sweep 2
recomputes the logits, forms w = exp((s - m) - log l), the hard shrinkage h, and accumulates
sum(h·M), sum(h), sum(h·log h) on chip. Renormalisation and entropy then need only per-row
scalars, so no Q x N tensor ever reaches device memory. The forward saves four numbers per
row (m, log l, the shrink sum S and A' = sum a²/(a+eps); S and A' are 1 at lam = 0), and Y
(below) where its plan needs it. m and log l are kept apart rather than as one logsumexp
L = m + log l: rounding L (|L| up to 1/temperature) would cost every weight a relative error
of ulp(L), which a near one-hot row, the usual MemAE case, turns into a large error in its
entropy and gradients.

Without shrinkage (lam = 0: MemAE-nonSpar, DAAD's and MNAD's reads) the weights are the
softmax itself, so one sweep suffices, as in FlashAttention: the read accumulates
exp(s - m)·mv against a running max m and is rescaled when m grows; the entropy comes from
P = sum exp(s - m)·(s - m), rescaled the same way, as log l - P / l. That is -sum w log w,
where the reference takes -sum w log(w + eps): the two differ by sum w log(1 + eps/w), less
than N·eps (eps = 1e-12), and A' (sum w²/(w + eps)) is taken as 1, its eps terms nearly
cancelling those of the entropy in D; A' is saved less the rounding of a 16-bit entropy
output, so that D (below) carries the entropy unrounded.

The backward recomputes the logits, FlashAttention style. The per-row reduction
D = sum_j a_j·dL/da_j equals g·read + gamma·(entropy - A'), computed up front from the
outputs (the analogue of rowsum(dO∘O)). A query-major kernel then yields d(query) and the
softmax row term R = sum_j w_j·dL/dw_j together: d(query) is linear in R, so it is
accumulated as X - R·Y with Y = sum_j w_j·mk_j. Where those two C-wide accumulators leave
room only for tiles too small for Hopper's wgmma (C = 256 in 16-bit and TF32), Y comes from
the forward instead ("forward_y": its first sweep, which has no C-wide accumulator of its
own, accumulates Y online and saves it) and the kernel keeps X and R; without a saved Y it
runs twice: R alone, then d(query) = sum w·(dw - R)·mk with one accumulator. For lam = 0
dL/dw is shifted by -D first, which leaves the gradients unchanged and makes R zero but for
D's rounding (D comes from the rounded read): the lam = 0 plan ("dquery_only")
takes R = 0, as FlashAttention takes its D from the rounded output (16-bit errors stay
within eager PyTorch's in the same precision), and needs one query-major sweep with one
accumulator. A memory-major kernel recomputes the tiles once more with every row's m, l, S,
D, R known and accumulates d(memory); neither kernel uses atomics, so the backward is
deterministic. Asked for (atomic_backward_enabled), the memory-major kernel also adds
d(query) with atomics and the query-major d(query) sweep is skipped (FlashAttention-2's
backward; not deterministic).

When there are too few query blocks to fill the GPU, the slots (forward, query-major
backward) or the queries (memory-major backward) are split across programs and the partial
sums combined with a few O((Q+N)·C) torch ops.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

EPS = 1e-12


def triton_interpret_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason(device: torch.device) -> Optional[str]:
    """None when these kernels can serve tensors on `device`, else why not."""
    if device.type == "cuda" or (device.type == "cpu" and triton_interpret_enabled()):
        return None
    return (
        f"triton kernels need CUDA tensors (got {device.type}); on the CPU they run only "
        "under Triton's interpreter (set TRITON_INTERPRET=1 before starting Python)"
    )


@triton.jit
def _mm(a, b, acc, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # Triton's CPU interpreter gets 16-bit dots wrong, so under it they run in float32.
    # out_dtype follows the accumulator: Triton 3.6 rejects a float64 acc with the default.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee",
                      out_dtype=acc.dtype)
    else:
        return tl.dot(a, b, acc, input_precision=PREC, out_dtype=acc.dtype)


@triton.jit
def _shrink(w, lam):
    """h = relu(w - lam)·w / (|w - lam| + eps), written for w > lam only."""
    u = w - lam
    keep = (u > 0) | (u != u)  # a NaN weight is kept, so it propagates as in the reference
    return tl.where(keep, w * u / (u + 1e-12), 0.0), u, keep


@triton.jit
def _dlogit_terms(w, gm, lam, gam, inv_s, d_row, SHRINK: tl.constexpr):
    """Addressing weight a and dL/dw for one tile; gm = g·mv_j, row stats pre-broadcast.

    For lam = 0, dL/dw comes back shifted by -D (softmax ignores a shift of dL/dw), so that
    R = sum w·dw is zero but for D's rounding, and the lam = 0 plan can take R = 0.
    """
    if SHRINK:
        h, u, keep = _shrink(w, lam)
        a = h * inv_s
        da = gm - gam * (tl.log(a + 1e-12) + a / (a + 1e-12))
        up = u + 1e-12
        dh_dw = tl.where(keep, u / up + w * 1e-12 / (up * up), 0.0)
        dw = dh_dw * (da - d_row) * inv_s
    else:
        a = w
        dw = gm - gam * (tl.log(w + 1e-12) + w / (w + 1e-12)) - d_row
    return a, dw


@triton.jit
def _online_max_sum(zq, MK, offs_c, mask_c, C, n_start, n_end, scale, zero,
                    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
                    UPCAST: tl.constexpr):
    """Sweep 1 over slots [n_start, n_end): running max m and sum l of exp(s - m) per row."""
    m_i = tl.full([BLOCK_Q], float("-inf"), dtype=scale.dtype)
    l_i = tl.zeros([BLOCK_Q], dtype=scale.dtype)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_end
        mk = tl.load(MK + offs_n[:, None] * C + offs_c[None, :],
                     mask=mask_n[:, None] & mask_c[None, :], other=0.0)
        s = _mm(zq, tl.trans(mk), zero, PREC, UPCAST) * scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)
        m_i = m_new
    return m_i, l_i


@triton.jit
def _online_read(zq, MK, MV, offs_c, mask_c, C, n_start, n_end, scale, zero, acc,
                 BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
                 UPCAST: tl.constexpr, SHARED_KV: tl.constexpr):
    """lam = 0 in one sweep over slots [n_start, n_end), FlashAttention's online softmax:
    running max m, l = sum p and acc = sum p·mv with p = exp(s - m), and P = sum p·(s - m)
    for the entropy (-sum w log w = log l - P / l), all rescaled by exp(m_old - m_new)
    whenever m grows."""
    m_i = tl.full([BLOCK_Q], float("-inf"), dtype=scale.dtype)
    l_i = tl.zeros([BLOCK_Q], dtype=scale.dtype)
    p_i = tl.zeros([BLOCK_Q], dtype=scale.dtype)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_end
        mask_nc = mask_n[:, None] & mask_c[None, :]
        mk = tl.load(MK + offs_n[:, None] * C + offs_c[None, :], mask=mask_nc, other=0.0)
        if SHARED_KV:
            mv = mk
        else:
            mv = tl.load(MV + offs_n[:, None] * C + offs_c[None, :], mask=mask_nc, other=0.0)
        s = _mm(zq, tl.trans(mk), zero, PREC, UPCAST) * scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        # Masked slots (s = -inf) and the first tile (m_i = -inf, l_i = 0) add nothing; the
        # where()s keep inf·0 out.
        moved = tl.where(l_i > 0, m_i - m_new, 0.0) * l_i
        shifted = tl.where(mask_n[None, :], s - m_new[:, None], 0.0)
        p_i = alpha * (p_i + moved) + tl.sum(p * shifted, 1)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _mm(p.to(mv.dtype), mv, acc * alpha[:, None], PREC, UPCAST)
        m_i = m_new
    return m_i, l_i, p_i, acc


@triton.jit
def _row_max_sum_kernel(ZQ, MK, PART_MAX, PART_SUM, PART_Y, PARAMS, Q, N, C, n_per_split,
                        BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                        PREC: tl.constexpr, UPCAST: tl.constexpr, SHARED_KV: tl.constexpr,
                        SAVE_Y: tl.constexpr):
    """Sweep 1 over one split of the slots, for the host to combine across splits; with
    SAVE_Y also the split's sum exp(s - m)·mk (see _fwd_kernel)."""
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    scale = tl.load(PARAMS)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_c = tl.arange(0, BLOCK_C)
    mask_q = offs_q < Q
    mask_c = offs_c < C
    zq = tl.load(ZQ + offs_q[:, None] * C + offs_c[None, :],
                 mask=mask_q[:, None] & mask_c[None, :], other=0.0)
    n_start = pid_s * n_per_split
    n_end = tl.minimum(n_start + n_per_split, N)
    zero = tl.zeros([BLOCK_Q, BLOCK_N], dtype=scale.dtype)
    part = pid_s * Q + offs_q
    if SAVE_Y:
        y_acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=scale.dtype)
        m_i, l_i, _, y_acc = _online_read(zq, MK, MK, offs_c, mask_c, C, n_start, n_end, scale,
                                          zero, y_acc, BLOCK_Q, BLOCK_N, PREC, UPCAST, True)
        tl.store(PART_Y + part[:, None] * C + offs_c[None, :], y_acc,
                 mask=mask_q[:, None] & mask_c[None, :])
    else:
        m_i, l_i = _online_max_sum(zq, MK, offs_c, mask_c, C, n_start, n_end, scale, zero,
                                   BLOCK_Q, BLOCK_N, PREC, UPCAST)
    tl.store(PART_MAX + part, m_i, mask=mask_q)
    tl.store(PART_SUM + part, l_i, mask=mask_q)


@triton.jit
def _fwd_kernel(ZQ, MK, MV, READ, ENT, STATS, Y, PART_ACC, PART_STATS, PARAMS,
                Q, N, C, n_per_split,
                SHRINK: tl.constexpr, SPLIT: tl.constexpr,
                BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                PREC: tl.constexpr, UPCAST: tl.constexpr, SHARED_KV: tl.constexpr,
                SAVE_Y: tl.constexpr):
    """One block of queries over one split of the slots.

    lam > 0: sweeps 1 and 2. Unsplit (SPLIT = False) runs sweep 1 itself and writes the
    final read, entropy and stats; split takes m and log l from STATS and writes the partial
    sums of its slots (acc, sum h, sum h·log h, #kept) for the host to combine. SAVE_Y
    (unsplit; the split path's _row_max_sum_kernel does it there): sweep 1 also accumulates
    Y = sum w·mk online, for the backward's "forward_y" plan (one product more here, the
    softmax row term's sweep less there).
    lam = 0: one online sweep (_online_read). Unsplit writes the results; split writes its
    partial acc, m, l and P, which the host combines as FlashDecoding does.
    """
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    scale = tl.load(PARAMS)
    lam = tl.load(PARAMS + 1)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_c = tl.arange(0, BLOCK_C)
    mask_q = offs_q < Q
    mask_c = offs_c < C
    mask_qc = mask_q[:, None] & mask_c[None, :]
    zq = tl.load(ZQ + offs_q[:, None] * C + offs_c[None, :], mask=mask_qc, other=0.0)
    n_start = pid_s * n_per_split
    n_end = tl.minimum(n_start + n_per_split, N)
    zero = tl.zeros([BLOCK_Q, BLOCK_N], dtype=scale.dtype)
    acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=scale.dtype)
    part = pid_s * Q + offs_q
    stride = Q * tl.num_programs(1)

    if not SHRINK:
        row_max, l_i, p_i, acc = _online_read(zq, MK, MV, offs_c, mask_c, C, n_start, n_end,
                                              scale, zero, acc, BLOCK_Q, BLOCK_N, PREC, UPCAST,
                                              SHARED_KV)
        if SPLIT:
            tl.store(PART_ACC + part[:, None] * C + offs_c[None, :], acc, mask=mask_qc)
            tl.store(PART_STATS + part, row_max, mask=mask_q)
            tl.store(PART_STATS + stride + part, l_i, mask=mask_q)
            tl.store(PART_STATS + 2 * stride + part, p_i, mask=mask_q)
        else:
            row_logl = tl.log(l_i)
            read = acc / l_i[:, None]
            ent = row_logl - p_i / l_i
            ent_out = ent.to(ENT.dtype.element_ty)
            tl.store(READ + offs_q[:, None] * C + offs_c[None, :], read.to(READ.dtype.element_ty),
                     mask=mask_qc)
            tl.store(ENT + offs_q, ent_out, mask=mask_q)
            one = tl.full([BLOCK_Q], 1.0, dtype=scale.dtype)
            tl.store(STATS + offs_q, row_max, mask=mask_q)
            tl.store(STATS + Q + offs_q, row_logl, mask=mask_q)
            tl.store(STATS + 2 * Q + offs_q, one, mask=mask_q)
            # A' = 1 less the entropy output's rounding (see the module docstring)
            tl.store(STATS + 3 * Q + offs_q, 1.0 - (ent - ent_out.to(scale.dtype)), mask=mask_q)
    else:
        if SPLIT:
            row_max = tl.load(STATS + offs_q, mask=mask_q, other=0.0)
            row_logl = tl.load(STATS + Q + offs_q, mask=mask_q, other=0.0)
        elif SAVE_Y:
            y_acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=scale.dtype)
            row_max, l_i, _, y_acc = _online_read(zq, MK, MK, offs_c, mask_c, C, n_start, n_end,
                                                  scale, zero, y_acc, BLOCK_Q, BLOCK_N, PREC,
                                                  UPCAST, True)
            row_logl = tl.log(l_i)
            tl.store(Y + offs_q[:, None] * C + offs_c[None, :], y_acc / l_i[:, None],
                     mask=mask_qc)
        else:
            row_max, l_i = _online_max_sum(zq, MK, offs_c, mask_c, C, n_start, n_end, scale,
                                           zero, BLOCK_Q, BLOCK_N, PREC, UPCAST)
            row_logl = tl.log(l_i)
        sum_h = tl.zeros([BLOCK_Q], dtype=scale.dtype)
        sum_hlogh = tl.zeros([BLOCK_Q], dtype=scale.dtype)
        num_kept = tl.zeros([BLOCK_Q], dtype=scale.dtype)
        for n0 in range(n_start, n_end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < n_end
            mask_nc = mask_n[:, None] & mask_c[None, :]
            mk = tl.load(MK + offs_n[:, None] * C + offs_c[None, :], mask=mask_nc, other=0.0)
            if SHARED_KV:  # dot similarity: keys and values are the same memory tile
                mv = mk
            else:
                mv = tl.load(MV + offs_n[:, None] * C + offs_c[None, :], mask=mask_nc,
                             other=0.0)
            s = _mm(zq, tl.trans(mk), zero, PREC, UPCAST) * scale
            w = tl.where(mask_n[None, :], tl.exp((s - row_max[:, None]) - row_logl[:, None]),
                         0.0)
            h, u, keep = _shrink(w, lam)
            sum_h += tl.sum(h, 1)
            sum_hlogh += tl.sum(tl.where(keep, h * tl.log(tl.where(keep, h, 1.0)), 0.0), 1)
            num_kept += tl.sum(keep.to(scale.dtype), 1)
            acc = _mm(h.to(mv.dtype), mv, acc, PREC, UPCAST)
        if SPLIT:
            tl.store(PART_ACC + part[:, None] * C + offs_c[None, :], acc, mask=mask_qc)
            tl.store(PART_STATS + part, sum_h, mask=mask_q)
            tl.store(PART_STATS + stride + part, sum_hlogh, mask=mask_q)
            tl.store(PART_STATS + 2 * stride + part, num_kept, mask=mask_q)
        else:
            s_c = tl.maximum(sum_h, 1e-12)
            frac = sum_h / s_c
            ent = -sum_hlogh / s_c + frac * tl.log(s_c) - 1e-12 * frac * num_kept
            aux = frac - 1e-12 * frac * num_kept
            tl.store(READ + offs_q[:, None] * C + offs_c[None, :],
                     (acc / s_c[:, None]).to(READ.dtype.element_ty), mask=mask_qc)
            tl.store(ENT + offs_q, ent.to(ENT.dtype.element_ty), mask=mask_q)
            tl.store(STATS + offs_q, row_max, mask=mask_q)
            tl.store(STATS + Q + offs_q, row_logl, mask=mask_q)
            tl.store(STATS + 2 * Q + offs_q, sum_h, mask=mask_q)
            tl.store(STATS + 3 * Q + offs_q, aux, mask=mask_q)


@triton.jit
def _bwd_query_kernel(ZQ, MK, MV, MNORM, G, GAM, STATS, DROW, RROW, PART_X, PART_Y, PART_R,
                      PARAMS, Q, N, C, n_per_split,
                      SHRINK: tl.constexpr, PASS: tl.constexpr, BLOCK_Q: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, PREC: tl.constexpr,
                      UPCAST: tl.constexpr, SHARED_KV: tl.constexpr):
    """Query-major backward sweep. PASS says what it accumulates per row:
    "fused": X = sum w·dw·mk, Y = sum w·mk and R = sum w·dw, so d(query) = X - R·Y in one
             sweep, at the price of two C-wide accumulators;
    "row_term": R alone, no C-wide accumulator (64-row wgmma tiles);
    "dquery": X - R·Y directly, as sum w·(dw - R)·mk with R from RROW, one accumulator;
    "x_and_r": X and R, one accumulator, for the "forward_y" plan (Y from the forward).
    With cosine similarity the dquery and x_and_r passes read no value tile: the values are
    the unit keys times the slot norms MNORM, so g·mv = (g·mk)·|m| (one C-wide tile fewer,
    which keeps their wgmma tiles from spilling).
    """
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    scale = tl.load(PARAMS)
    lam = tl.load(PARAMS + 1)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_c = tl.arange(0, BLOCK_C)
    mask_q = offs_q < Q
    mask_c = offs_c < C
    mask_qc = mask_q[:, None] & mask_c[None, :]
    zq = tl.load(ZQ + offs_q[:, None] * C + offs_c[None, :], mask=mask_qc, other=0.0)
    g = tl.load(G + offs_q[:, None] * C + offs_c[None, :], mask=mask_qc, other=0.0)
    row_max = tl.load(STATS + offs_q, mask=mask_q, other=0.0)
    row_logl = tl.load(STATS + Q + offs_q, mask=mask_q, other=0.0)
    s_row = tl.load(STATS + 2 * Q + offs_q, mask=mask_q, other=1.0)
    gam = tl.load(GAM + offs_q, mask=mask_q, other=0.0)
    d_row = tl.load(DROW + offs_q, mask=mask_q, other=0.0)
    inv_s = 1.0 / tl.maximum(s_row, 1e-12)
    if SHRINK:
        d_row = tl.where(s_row >= 1e-12, d_row, 0.0)
    if PASS == "dquery":
        r_row = tl.load(RROW + offs_q, mask=mask_q, other=0.0)
    n_start = pid_s * n_per_split
    n_end = tl.minimum(n_start + n_per_split, N)
    zero = tl.zeros([BLOCK_Q, BLOCK_N], dtype=scale.dtype)
    if PASS != "row_term":
        x_acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=scale.dtype)
    if PASS == "fused":
        y_acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=scale.dtype)
    if PASS != "dquery":
        r_acc = tl.zeros([BLOCK_Q], dtype=scale.dtype)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_end
        mask_nc = mask_n[:, None] & mask_c[None, :]
        mk = tl.load(MK + offs_n[:, None] * C + offs_c[None, :], mask=mask_nc, other=0.0)
        if SHARED_KV:  # dot similarity: keys and values are the same memory tile
            mv = mk
        elif PASS != "dquery" and PASS != "x_and_r":
            mv = tl.load(MV + offs_n[:, None] * C + offs_c[None, :], mask=mask_nc, other=0.0)
        s = _mm(zq, tl.trans(mk), zero, PREC, UPCAST) * scale
        w = tl.where(mask_n[None, :], tl.exp((s - row_max[:, None]) - row_logl[:, None]), 0.0)
        if (PASS == "dquery" or PASS == "x_and_r") and not SHARED_KV:
            norm = tl.load(MNORM + offs_n, mask=mask_n, other=0.0)
            gm = _mm(g, tl.trans(mk), zero, PREC, UPCAST) * norm[None, :]
        else:
            gm = _mm(g, tl.trans(mv), zero, PREC, UPCAST)
        a, dw = _dlogit_terms(w, gm, lam, gam[:, None], inv_s[:, None], d_row[:, None], SHRINK)
        if PASS == "dquery":
            ds = tl.where(mask_n[None, :], w * (dw - r_row[:, None]), 0.0)
            x_acc = _mm(ds.to(mk.dtype), mk, x_acc, PREC, UPCAST)
        else:
            wdw = tl.where(mask_n[None, :], w * dw, 0.0)
            if PASS != "row_term":
                x_acc = _mm(wdw.to(mk.dtype), mk, x_acc, PREC, UPCAST)
            if PASS == "fused":
                y_acc = _mm(w.to(mk.dtype), mk, y_acc, PREC, UPCAST)
            r_acc += tl.sum(wdw, 1)
    part = pid_s * Q + offs_q
    if PASS != "row_term":
        tl.store(PART_X + part[:, None] * C + offs_c[None, :], x_acc, mask=mask_qc)
    if PASS == "fused":
        tl.store(PART_Y + part[:, None] * C + offs_c[None, :], y_acc, mask=mask_qc)
    if PASS != "dquery":
        tl.store(PART_R + part, r_acc, mask=mask_q)


@triton.jit
def _bwd_memory_kernel(ZQ, MK, MV, G, GAM, STATS, DROW, RROW, PART_DMK, PART_DMV, DQ, PARAMS,
                       Q, N, C, q_per_split,
                       SHRINK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_C: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                       SHARED_KV: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    """Memory-major backward: partial d(mk) = sum_i ds·zq and d(mv) = sum_i a·g per slot.

    With dot similarity the keys are the values, so one accumulator takes both terms and
    PART_DMK receives the slot's whole gradient (PART_DMV is not touched): a C-wide float32
    accumulator less, which keeps the picked tiles from spilling.
    ATOMIC_DQ (the "atomic" plan, FlashAttention-2's): each query tile's sum_j ds·mk over this
    program's slots is also added into DQ with atomics, so no query-major sweep computes
    d(query); the order of the additions, hence the rounding, varies from run to run.
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    scale = tl.load(PARAMS)
    lam = tl.load(PARAMS + 1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    mask_n = offs_n < N
    mask_c = offs_c < C
    mask_nc = mask_n[:, None] & mask_c[None, :]
    mk = tl.load(MK + offs_n[:, None] * C + offs_c[None, :], mask=mask_nc, other=0.0)
    if SHARED_KV:
        mv = mk
    else:
        mv = tl.load(MV + offs_n[:, None] * C + offs_c[None, :], mask=mask_nc, other=0.0)
    q_start = pid_s * q_per_split
    q_end = tl.minimum(q_start + q_per_split, Q)
    zero = tl.zeros([BLOCK_N, BLOCK_Q], dtype=scale.dtype)
    dmk = tl.zeros([BLOCK_N, BLOCK_C], dtype=scale.dtype)
    if not SHARED_KV:
        dmv = tl.zeros([BLOCK_N, BLOCK_C], dtype=scale.dtype)
    for q0 in range(q_start, q_end, BLOCK_Q):
        offs_q = q0 + tl.arange(0, BLOCK_Q)
        mask_q = offs_q < q_end
        mask_qc = mask_q[:, None] & mask_c[None, :]
        zq = tl.load(ZQ + offs_q[:, None] * C + offs_c[None, :], mask=mask_qc, other=0.0)
        g = tl.load(G + offs_q[:, None] * C + offs_c[None, :], mask=mask_qc, other=0.0)
        row_max = tl.load(STATS + offs_q, mask=mask_q, other=0.0)
        row_logl = tl.load(STATS + Q + offs_q, mask=mask_q, other=0.0)
        s_row = tl.load(STATS + 2 * Q + offs_q, mask=mask_q, other=1.0)
        gam = tl.load(GAM + offs_q, mask=mask_q, other=0.0)
        d_row = tl.load(DROW + offs_q, mask=mask_q, other=0.0)
        r_row = tl.load(RROW + offs_q, mask=mask_q, other=0.0)
        inv_s = 1.0 / tl.maximum(s_row, 1e-12)
        if SHRINK:
            d_row = tl.where(s_row >= 1e-12, d_row, 0.0)
        s_t = _mm(mk, tl.trans(zq), zero, PREC, UPCAST) * scale
        w_t = tl.where(mask_q[None, :], tl.exp((s_t - row_max[None, :]) - row_logl[None, :]),
                       0.0)
        gm_t = _mm(mv, tl.trans(g), zero, PREC, UPCAST)
        a_t, dw_t = _dlogit_terms(w_t, gm_t, lam, gam[None, :], inv_s[None, :], d_row[None, :],
                                  SHRINK)
        ds_t = w_t * (dw_t - r_row[None, :])
        # Padded slots too: their w_t = exp(-logsumexp) can overflow, and the atomic path
        # sums ds over the slots (inf · 0 would be NaN).
        ds_t = tl.where(mask_n[:, None] & mask_q[None, :], ds_t, 0.0)
        a_t = tl.where(mask_q[None, :], a_t, 0.0)
        if SHARED_KV:
            dmk = _mm((ds_t * scale).to(zq.dtype), zq, dmk, PREC, UPCAST)
            dmk = _mm(a_t.to(g.dtype), g, dmk, PREC, UPCAST)
        else:
            dmk = _mm(ds_t.to(zq.dtype), zq, dmk, PREC, UPCAST)
            dmv = _mm(a_t.to(g.dtype), g, dmv, PREC, UPCAST)
        if ATOMIC_DQ:
            dq = _mm(tl.trans(ds_t).to(mk.dtype), mk, tl.zeros([BLOCK_Q, BLOCK_C], dtype=scale.dtype),
                     PREC, UPCAST)
            tl.atomic_add(DQ + offs_q[:, None] * C + offs_c[None, :], dq, mask=mask_qc)
    part = pid_s * N + offs_n
    if SHARED_KV:
        tl.store(PART_DMK + part[:, None] * C + offs_c[None, :], dmk, mask=mask_nc)
    else:
        tl.store(PART_DMK + part[:, None] * C + offs_c[None, :], dmk * scale, mask=mask_nc)
        tl.store(PART_DMV + part[:, None] * C + offs_c[None, :], dmv, mask=mask_nc)


# ---------------------------------------------------------------------------------------------
# Launch planning


class Tiles(NamedTuple):
    block_q: int
    block_n: int
    num_warps: int
    num_stages: int


# Tile shapes per operand type, kernel and padded channel count (the first entry at least
# BLOCK_C). A program keeps BLOCK x BLOCK_C tiles of its rows and one or two float32 accumulators
# in registers, so wide channels take small tiles. Chosen by bench/triton_resources.py, which
# compiles every candidate for sm_90 without a GPU (Triton 3.6, the GPU machine's version, and
# 3.8, in every launch variant). The 16-bit and TF32 picks come from compiles specialised as
# the JIT specialises a launch of aligned shapes (--specialize: every pointer and Q, N, C
# divisible by 16; results in bench/results/2026-12-02-specialized-triton-resources-sm90.json),
# the worst of the two versions counting, where --check finds them usable unspecialised too
# (odd shapes) in every launch variant with both versions; elsewhere (the 16-bit memory-major
# kernel, the 16-bit forward at 256 and 512, the fused and dquery passes at 512 and the fused
# pass at 128, the TF32 forward at 256 and 512) the larger specialised picks spilled 0.15-2 KB
# unspecialised, and the earlier picks stay. The query-major dquery /
# x_and_r passes at C = 256 in 16-bit keep 64 x 32 wgmma tiles that spill 24-32 bytes
# specialised with Triton 3.6 (none with 3.8), where the only spill-free tile is a 32-row
# mma.sync one. Among the tiles that compile without
# register spills and within an H100's shared memory, one whose products become Hopper's
# wgmma if any does (64 rows per warpgroup; the others get mma.sync, Hopper's slower
# tensor-core path), then the largest; where none is spill-free, the least spilling (its
# KNOWN_SPILLS lists them). The larger candidates spill kilobytes, or exceed shared memory,
# which fails the launch. At C = 256 the fused query-major backward and the memory-major
# backward find no spill-free wgmma tile: they hold two C-wide float32 accumulators per row
# (hence _FORWARD_Y below). Their speed is not yet timed on a GPU
# (bench/tune_triton_tiles.py, a step of bench/gpu_check.sh).
_TILES = {
    "16-bit": {  # bfloat16 / float16 on tensor cores
        "forward": {64: (128, 64, 8, 2), 128: (128, 64, 8, 2), 256: (64, 32, 8, 2),
                    512: (32, 16, 8, 1)},
        "backward_query": {64: (128, 64, 8, 2), 128: (64, 16, 8, 2), 256: (32, 32, 8, 2),
                           512: (16, 16, 8, 1)},
        "backward_row_term": {256: (64, 32, 8, 2)},
        "backward_dquery": {64: (128, 64, 8, 2), 128: (128, 64, 8, 2), 256: (64, 32, 8, 2),
                            512: (16, 16, 8, 1)},
        "backward_memory": {64: (16, 64, 8, 2), 128: (16, 64, 8, 2), 256: (32, 32, 8, 1),
                            512: (16, 16, 8, 1)},
    },
    "tf32": {  # float32 with torch's TF32 allowed
        "forward": {64: (128, 64, 8, 2), 128: (128, 32, 8, 2), 256: (32, 32, 8, 1),
                    512: (16, 16, 8, 1)},
        "backward_query": {64: (128, 32, 8, 2), 128: (64, 32, 8, 2), 256: (32, 32, 8, 2),
                           512: (16, 16, 8, 1)},
        "backward_row_term": {256: (64, 16, 8, 2)},
        "backward_dquery": {64: (128, 64, 8, 2), 128: (128, 32, 8, 2), 256: (64, 32, 8, 2),
                            512: (16, 16, 8, 1)},
        "backward_memory": {64: (16, 64, 8, 2), 128: (64, 32, 8, 2), 256: (32, 32, 8, 1),
                            512: (16, 16, 8, 1)},
    },
    # IEEE float32 products on CUDA cores. At C > 128 no candidate is spill-free in every
    # launch variant (lam = 0 or dot similarity spill 0.3 KB at C = 256, 2 KB at 512): TF32
    # or bfloat16 are the fast paths there.
    "float32": {
        "forward": {16: (64, 32, 8, 2), 32: (32, 64, 8, 2), 64: (64, 32, 8, 2),
                    128: (16, 16, 8, 1), 256: (16, 32, 8, 1), 512: (16, 32, 8, 1)},
        "backward_query": {16: (32, 64, 8, 2), 32: (64, 32, 8, 2), 64: (32, 32, 8, 1),
                           128: (16, 32, 8, 1), 256: (16, 16, 8, 1), 512: (16, 16, 8, 1)},
        "backward_memory": {16: (32, 64, 8, 2), 32: (32, 64, 8, 2), 64: (32, 32, 8, 1),
                            128: (16, 16, 8, 1), 256: (16, 16, 8, 1), 512: (16, 16, 8, 1)},
    },
    # float64 is for tests and gradcheck: the smallest tile, the only one that compiles
    # cleanly at most widths (larger ones spill at some widths, even narrow ones); at C = 256
    # it spills in some launch variants, and nothing fits the shared memory beyond.
    "float64": {kernel: {256: (16, 16, 8, 1)}
                for kernel in ("forward", "backward_query", "backward_memory")},
}
# Where the fused query-major sweep's two C-wide accumulators (X and Y) leave tiles too
# small for wgmma, Y = sum w·mk moves to the forward ("forward_y"): its first sweep, which
# holds no C-wide accumulator otherwise, accumulates Y online (one product more), and the
# backward's query-major sweep keeps X and R alone (one accumulator, wgmma tiles): 4 + 7 =
# 11 units of matrix work per training step, as the fused plan's 3 + 8, where taking R in a
# sweep of its own ("row_term_first", then "dquery") would cost 12. The forward saves Y only
# when autograd records it (a forward under no_grad does 3 units). Elsewhere the one-sweep
# passes take the fused sweep's tiles (tile_config): they hold less.
_FORWARD_Y = {("16-bit", 256), ("tf32", 256)}
# (operand type, kernel, BLOCK_C) -> stack bytes per thread that the pick may spill, in some
# launch variant, where no candidate was spill-free (measured with Triton 3.6 and 3.8, with
# headroom); bench/triton_resources.py --check holds every other pick to 128 bytes. float32
# backward_query at 512 takes the 16 x 16 tile, which spills more than 16 x 32 but, unlike
# it, fits an A100's shared memory too.
KNOWN_SPILLS = {
    ("float32", "backward_query", 256): 512, ("float32", "backward_query", 512): 6144,
    ("float32", "backward_memory", 256): 512, ("float32", "backward_memory", 512): 3072,
    # the lam = 0 dquery pass at 512 (Triton 3.6; 3.8 does not spill), at the fused pass's
    # tile: half the fused pass's spill
    ("float32", "backward_dquery", 512): 3584,
    # the atomic plan's memory-major kernel (optional; the smallest tile): IEEE float32 and
    # float64 hold one (BLOCK_Q x C) product more than the default plans' kernel
    ("float32", "backward_memory_atomic", 256): 384, ("float32", "backward_memory_atomic", 512): 2560,
    ("tf32", "backward_memory_atomic", 256): 256, ("tf32", "backward_memory_atomic", 512): 384,
    ("float64", "backward_memory_atomic", 256): 2048,
    ("tf32", "backward_memory", 512): 384,
    ("float64", "backward_query", 256): 384, ("float64", "backward_memory", 256): 3584,
}


def _operand_type(dtype: torch.dtype, precision: str) -> str:
    if dtype in (torch.float16, torch.bfloat16):
        return "16-bit"
    if dtype == torch.float32:
        return "tf32" if precision == "tf32" else "float32"
    return "float64"


def unsupported_reason(dtype: torch.dtype, channels: int, device: torch.device) -> Optional[str]:
    """Why the GPU kernels cannot take these inputs (no tile shape fits), or None."""
    if device.type != "cuda":
        return None  # the interpreter has no register or shared-memory limits
    block_c = _block_c(channels)
    widest = max(_TILES[_operand_type(dtype, "ieee")]["forward"])
    if block_c > widest:
        return (f"{dtype} inputs with {channels} channels: the Triton kernels' tiles fit at "
                f"most {widest} channels for this dtype")
    return None


def _fitting_width(table, block_c):
    fitting = [width for width in sorted(table) if width >= block_c]
    return fitting[0] if fitting else max(table)


def tile_config(kernel: str, block_c: int, dtype: torch.dtype, device: torch.device,
                precision: str = "ieee") -> Tiles:
    """Tile shape and launch settings for one kernel ("forward", "backward_query",
    "backward_row_term", "backward_dquery", "backward_x_and_r", "backward_memory",
    "backward_memory_atomic") at padded channel count block_c (see _TILES)."""
    if device.type == "cpu":  # the interpreter runs whole tiles in numpy: larger is faster
        return Tiles(32, 64, 4, 1)
    if kernel == "backward_x_and_r":
        kernel = "backward_dquery"  # one C-wide accumulator and a row sum, as the dquery pass
    if kernel == "backward_memory_atomic":
        kernel = "backward_memory"
    tables = _TILES[_operand_type(dtype, precision)]
    table = tables.get(kernel, {})
    if (kernel in ("backward_row_term", "backward_dquery")
            and _fitting_width(tables["backward_query"], block_c) not in table):
        table = tables["backward_query"]  # the two-sweep passes hold less than the fused one
    return Tiles(*table[_fitting_width(table, block_c)])


ATOMIC_BACKWARD_ENV = "MEMAE_FUSED_ATOMIC_BACKWARD"


def atomic_backward_enabled() -> bool:
    """Whether the backward takes the "atomic" plan: asked for with the environment variable
    MEMAE_FUSED_ATOMIC_BACKWARD=1 (read when the backward runs; under torch.compile, when it
    is traced, so a compiled model keeps the setting it was compiled with), never while
    torch.use_deterministic_algorithms is on. It does 7 units of matrix work per training
    step at lam = 0 and 10 with shrinkage (against 9 and 11) but adds d(query) with
    atomics, so its rounding varies between runs; the default plans are deterministic."""
    if os.environ.get(ATOMIC_BACKWARD_ENV, "0") in ("", "0"):
        return False
    return not torch.are_deterministic_algorithms_enabled()


def backward_query_plan(block_c: int, dtype: torch.dtype, device: torch.device,
                        precision: str = "ieee", shrink: bool = True) -> str:
    """How the query-major backward runs: "dquery_only" for lam = 0 (R = 0, see the module
    docstring: one sweep with one accumulator), else "fused" (one sweep, two accumulators) or
    "forward_y" (see _FORWARD_Y); "row_term_first" (two sweeps) is what "forward_y" falls
    back to when the forward saved no Y. With lam > 0 the interpreter runs the fused sweep;
    the tests ask for every plan."""
    if not shrink:
        return "dquery_only"
    if device.type == "cpu":
        return "fused"
    operand = _operand_type(dtype, precision)
    width = _fitting_width(_TILES[operand]["backward_query"], block_c)
    return "forward_y" if (operand, width) in _FORWARD_Y else "fused"


def _launch_meta(kernel, block_c, dtype, device, **constants):
    tiles = tile_config(kernel, block_c, dtype, device, constants.get("PREC", "ieee"))
    return tiles, dict(BLOCK_Q=tiles.block_q, BLOCK_N=tiles.block_n, BLOCK_C=block_c,
                       num_warps=tiles.num_warps, num_stages=tiles.num_stages, **constants)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    # Under the interpreter, two: inputs of a single block then take the split path, so the
    # CPU tests run both.
    return 2


def plan_splits(num_blocks: int, length: int, block: int, device: torch.device) -> int:
    """How many ways to split a sweep of `length` (tiles of `block`) across a second grid
    axis when num_blocks programs would leave SMs idle. The picked tiles take most of an SM's
    registers (200-255 x 256 threads), so one program runs per SM and programs run in waves
    of num_sms: the split taking the fewest waves per unit of work wins, the fewest splits on
    a tie (64 blocks on 132 SMs: 2 splits, one wave, rather than 3, two waves). With a
    program for every SM nothing is split: splits only add partial sums to combine."""
    sms = _num_sms(device)
    if num_blocks >= sms:
        return 1
    most = min(triton.cdiv(length, block), 2 * triton.cdiv(sms, num_blocks))
    return min(range(1, most + 1),
               key=lambda splits: (Fraction(triton.cdiv(num_blocks * splits, sms), splits),
                                   splits))


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 follows torch's matmul setting: "highest" keeps IEEE float32 products.
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee"


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _params(temperature: float, shrink_thres: float, dtype, device) -> torch.Tensor:
    """[1/temperature, shrink_thres] on the device, passed by pointer so that float64 runs keep
    float64 constants (Triton passes Python floats as float32). Filled on the device: a copy
    from the host would make the host wait for the stream."""
    params = torch.full((2,), 1.0 / temperature, dtype=_acc_dtype(dtype), device=device)
    params[1:].fill_(shrink_thres)
    return params


def _normalize(x: torch.Tensor) -> torch.Tensor:
    xf = x.to(_acc_dtype(x.dtype))
    return (xf / xf.norm(dim=1, keepdim=True).clamp_min(EPS)).to(x.dtype)


def _normalize_backward(x: torch.Tensor, grad_unit: torch.Tensor) -> torch.Tensor:
    """Gradient through x / max(|x|, eps), in the accumulation dtype."""
    xf = x.to(grad_unit.dtype)
    norm = xf.norm(dim=1, keepdim=True)
    unit = xf / norm.clamp_min(EPS)
    tangent = (grad_unit - unit * (unit * grad_unit).sum(dim=1, keepdim=True)) / norm.clamp_min(EPS)
    return torch.where(norm > EPS, tangent, grad_unit / EPS)


def _keys(query, memory, cosine):
    if cosine:
        return _normalize(query), _normalize(memory)
    return query, memory


def _launch(kernel, grid, *args, **meta):
    if triton_interpret_enabled():
        # Under Triton's interpreter torch cannot trace into the kernel (torch 2.14's
        # wrap_triton hands back the raw kernel, torch 2.11's refuses an interpreted one), so
        # it is called directly; while torch.compile traces with fake tensors, which carry
        # shapes and no data, there is nothing to run (on a GPU the launch is traced instead).
        if not any(_is_traced(a) for a in args if isinstance(a, torch.Tensor)):
            kernel[grid](*args, **meta)
        return
    wrap_triton(kernel)[grid](*args, **meta)


def _is_traced(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake
    from torch._subclasses.functional_tensor import FunctionalTensor

    return is_fake(t) or isinstance(t, FunctionalTensor)


def _dot_mode(query):
    interpret = query.device.type == "cpu"
    upcast = interpret and query.dtype in (torch.float16, torch.bfloat16)
    return dict(PREC=_dot_precision(query.dtype), UPCAST=upcast)


def _block_c(c: int) -> int:
    return max(16, triton.next_power_of_2(c))


# ---------------------------------------------------------------------------------------------
# Ops


@triton_op("memae_fused::triton_memory_read_fwd", mutates_args=())
def triton_memory_read_fwd(query: torch.Tensor, memory: torch.Tensor, shrink_thres: float,
                           cosine: bool, temperature: float, save_y: bool = False
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(read, entropy, stats, y): y = sum_j w_j·mk_j (Q x C, accumulation dtype) when save_y
    (lam > 0 and a backward of the "forward_y" plan to come), else empty."""
    query, memory = query.contiguous(), memory.contiguous()
    q, c = query.shape
    n = memory.shape[0]
    zq, mk = _keys(query, memory, cosine)
    acc_dtype = _acc_dtype(query.dtype)
    params = _params(temperature, shrink_thres, query.dtype, query.device)
    shrink = shrink_thres > 0
    tiles, meta = _launch_meta("forward", _block_c(c), query.dtype, query.device,
                               SHARED_KV=not cosine, **_dot_mode(query))
    block_n = tiles.block_n
    q_blocks = triton.cdiv(q, tiles.block_q)
    splits = plan_splits(q_blocks, n, block_n, query.device)
    n_per_split = triton.cdiv(triton.cdiv(n, splits), block_n) * block_n
    splits = triton.cdiv(n, n_per_split)

    read = torch.empty_like(query)
    entropy = query.new_empty((q,))
    stats = torch.empty((4, q), dtype=acc_dtype, device=query.device)
    save_y = save_y and shrink
    y = torch.empty((q, c) if save_y else (0,), dtype=acc_dtype, device=query.device)
    if splits == 1:
        _launch(_fwd_kernel, (q_blocks, 1),
                zq, mk, memory, read, entropy, stats, y, stats, stats, params, q, n, c, n,
                SHRINK=shrink, SPLIT=False, SAVE_Y=save_y, **meta)
        return read, entropy, stats, y

    part_acc = torch.empty((splits, q, c), dtype=acc_dtype, device=query.device)
    part_stats = torch.empty((3, splits, q), dtype=acc_dtype, device=query.device)
    if not shrink:
        # Each split's online sums are relative to its own max: rescale to the top one.
        _launch(_fwd_kernel, (q_blocks, splits),
                zq, mk, memory, read, entropy, stats, y, part_acc, part_stats, params,
                q, n, c, n_per_split, SHRINK=False, SPLIT=True, SAVE_Y=False, **meta)
        part_max, part_l, part_p = part_stats
        top = part_max.amax(dim=0)
        alpha = torch.exp(part_max - top)
        l_sum = (alpha * part_l).sum(dim=0)
        p_sum = (alpha * (part_p + (part_max - top) * part_l)).sum(dim=0)
        stats[0] = top
        stats[1] = torch.log(l_sum)
        stats[2] = 1.0
        read.copy_((alpha[:, :, None] * part_acc).sum(dim=0) / l_sum[:, None])
        full_entropy = stats[1] - p_sum / l_sum
        entropy.copy_(full_entropy)
        stats[3] = 1.0 - (full_entropy - entropy.to(acc_dtype))
        return read, entropy, stats, y

    part_max = torch.empty((splits, q), dtype=acc_dtype, device=query.device)
    part_sum = torch.empty_like(part_max)
    part_y = torch.empty((splits, q, c) if save_y else (0,), dtype=acc_dtype,
                         device=query.device)
    _launch(_row_max_sum_kernel, (q_blocks, splits),
            zq, mk, part_max, part_sum, part_y, params, q, n, c, n_per_split, SAVE_Y=save_y,
            **meta)
    top = part_max.amax(dim=0)
    alpha = torch.exp(part_max - top)
    l_sum = (part_sum * alpha).sum(dim=0)
    stats[0] = top
    stats[1] = torch.log(l_sum)
    if save_y:
        y.copy_((alpha[:, :, None] * part_y).sum(dim=0) / l_sum[:, None])
    _launch(_fwd_kernel, (q_blocks, splits),
            zq, mk, memory, read, entropy, stats, y, part_acc, part_stats, params,
            q, n, c, n_per_split, SHRINK=True, SPLIT=True, SAVE_Y=False, **meta)
    acc = part_acc.sum(dim=0)
    sum_h, sum_hlogh, num_kept = part_stats.sum(dim=1)
    s_c = sum_h.clamp_min(EPS)
    frac = sum_h / s_c
    entropy.copy_(-sum_hlogh / s_c + frac * torch.log(s_c) - EPS * frac * num_kept)
    read.copy_(acc / s_c[:, None])
    stats[2] = sum_h
    stats[3] = frac - EPS * frac * num_kept
    return read, entropy, stats, y


def _query_sweep(query, zq, mk, memory, grad_read, gam, stats, d_row, params, constants,
                 pass_name, r_row=None, y=None):
    """One launch of _bwd_query_kernel (split over the slots when the query blocks are few)
    and the combine of its partial sums: (X - R·Y or None, R or None); the x_and_r pass
    takes Y from the forward."""
    q, c = query.shape
    n = memory.shape[0]
    acc_dtype = _acc_dtype(query.dtype)
    kernel = {"fused": "backward_query", "row_term": "backward_row_term",
              "dquery": "backward_dquery", "x_and_r": "backward_x_and_r"}[pass_name]
    tiles, meta = _launch_meta(kernel, _block_c(c), query.dtype, query.device, PASS=pass_name,
                               **constants)
    q_blocks = triton.cdiv(q, tiles.block_q)
    splits = plan_splits(q_blocks, n, tiles.block_n, query.device)
    n_per_split = triton.cdiv(triton.cdiv(n, splits), tiles.block_n) * tiles.block_n
    splits = triton.cdiv(n, n_per_split)
    empty = stats.new_empty(0)
    # The dquery pass with cosine similarity: values = unit keys · slot norms (the kernel).
    memory_norms = empty
    if pass_name in ("dquery", "x_and_r") and not constants["SHARED_KV"]:
        memory_norms = memory.to(acc_dtype).norm(dim=1).clamp_min(EPS)
    part_x = empty if pass_name == "row_term" else torch.empty((splits, q, c), dtype=acc_dtype,
                                                               device=query.device)
    part_y = torch.empty_like(part_x) if pass_name == "fused" else empty
    part_r = empty if pass_name == "dquery" else torch.empty((splits, q), dtype=acc_dtype,
                                                             device=query.device)
    _launch(_bwd_query_kernel, (q_blocks, splits),
            zq, mk, memory, memory_norms, grad_read, gam, stats, d_row,
            empty if r_row is None else r_row,
            part_x, part_y, part_r, params, q, n, c, n_per_split, **meta)
    if pass_name == "row_term":
        return None, part_r.sum(dim=0)
    if pass_name == "dquery":
        return part_x.sum(dim=0), None
    r_sum = part_r.sum(dim=0)
    y_sum = y if pass_name == "x_and_r" else part_y.sum(dim=0)
    return part_x.sum(dim=0) - r_sum[:, None] * y_sum, r_sum


@triton_op("memae_fused::triton_memory_read_bwd", mutates_args=())
def triton_memory_read_bwd(grad_read: torch.Tensor, grad_entropy: torch.Tensor,
                           query: torch.Tensor, memory: torch.Tensor, read: torch.Tensor,
                           entropy: torch.Tensor, stats: torch.Tensor, y: torch.Tensor,
                           shrink_thres: float, cosine: bool, temperature: float
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
    query, memory = query.contiguous(), memory.contiguous()
    grad_read = grad_read.to(query.dtype).contiguous()
    q, c = query.shape
    n = memory.shape[0]
    zq, mk = _keys(query, memory, cosine)
    acc_dtype = _acc_dtype(query.dtype)
    params = _params(temperature, shrink_thres, query.dtype, query.device)
    shrink = shrink_thres > 0
    constants = dict(SHRINK=shrink, SHARED_KV=not cosine, **_dot_mode(query))

    gam = grad_entropy.to(acc_dtype).contiguous()
    # D = sum_j a_j dL/da_j, from the outputs (docs/algorithm.md).
    d_row = ((grad_read.to(acc_dtype) * read.to(acc_dtype)).sum(dim=1)
             + gam * (entropy.to(acc_dtype) - stats[3])).contiguous()

    block_c = _block_c(c)
    plan = backward_query_plan(block_c, query.dtype, query.device, constants["PREC"], shrink)
    if plan == "forward_y" and y.numel() == 0:
        plan = "row_term_first"  # the forward saved no Y (it ran without autograd recording)
    atomic = atomic_backward_enabled()
    grad_zq = None
    if atomic:  # d(query) from the memory-major sweep; R first where it is not 0
        if shrink:
            _, r_row = _query_sweep(query, zq, mk, memory, grad_read, gam, stats, d_row, params,
                                    constants, "row_term")
        else:
            r_row = torch.zeros_like(d_row)
    elif plan == "dquery_only":
        r_row = torch.zeros_like(d_row)
        grad_zq, _ = _query_sweep(query, zq, mk, memory, grad_read, gam, stats, d_row, params,
                                  constants, "dquery", r_row)
    elif plan == "fused":
        grad_zq, r_row = _query_sweep(query, zq, mk, memory, grad_read, gam, stats, d_row,
                                      params, constants, "fused")
    elif plan == "forward_y":
        grad_zq, r_row = _query_sweep(query, zq, mk, memory, grad_read, gam, stats, d_row,
                                      params, constants, "x_and_r", y=y)
    else:
        _, r_row = _query_sweep(query, zq, mk, memory, grad_read, gam, stats, d_row, params,
                                constants, "row_term")
        grad_zq, _ = _query_sweep(query, zq, mk, memory, grad_read, gam, stats, d_row, params,
                                  constants, "dquery", r_row)

    tiles, meta = _launch_meta("backward_memory", block_c, query.dtype, query.device,
                               ATOMIC_DQ=atomic, **constants)
    n_blocks = triton.cdiv(n, tiles.block_n)
    q_splits = plan_splits(n_blocks, q, tiles.block_q, query.device)
    q_per_split = triton.cdiv(triton.cdiv(q, q_splits), tiles.block_q) * tiles.block_q
    q_splits = triton.cdiv(q, q_per_split)
    part_dmk = torch.empty((q_splits, n, c), dtype=acc_dtype, device=query.device)
    # Dot similarity: the kernel puts the whole memory gradient in part_dmk.
    part_dmv = torch.empty_like(part_dmk) if cosine else part_dmk.new_empty(0)
    dq = torch.zeros((q, c), dtype=acc_dtype, device=query.device) if atomic else part_dmv
    _launch(_bwd_memory_kernel, (n_blocks, q_splits),
            zq, mk, memory, grad_read, gam, stats, d_row, r_row.contiguous(), part_dmk,
            part_dmv, dq, params, q, n, c, q_per_split, **meta)
    grad_zq = (dq if atomic else grad_zq) / temperature
    if cosine:
        grad_query = _normalize_backward(query, grad_zq)
        grad_memory = _normalize_backward(memory, part_dmk.sum(dim=0)) + part_dmv.sum(dim=0)
    else:
        grad_query = grad_zq
        grad_memory = part_dmk.sum(dim=0)
    return grad_query.to(query.dtype), grad_memory.to(memory.dtype)


def _setup_context(ctx, inputs, output):
    query, memory, shrink_thres, cosine, temperature, _ = inputs
    read, entropy, stats, y = output
    ctx.save_for_backward(query, memory, read, entropy, stats, y)
    ctx.args = (shrink_thres, cosine, temperature)


def _backward(ctx, grad_read, grad_entropy, grad_stats, grad_y):
    query, memory, read, entropy, stats, y = ctx.saved_tensors
    if grad_read is None:
        grad_read = torch.zeros_like(read)
    if grad_entropy is None:
        grad_entropy = torch.zeros_like(entropy)
    grad_query, grad_memory = triton_memory_read_bwd(
        grad_read, grad_entropy, query, memory, read, entropy, stats, y, *ctx.args)
    return grad_query, grad_memory, None, None, None, None


triton_memory_read_fwd.register_autograd(_backward, setup_context=_setup_context)


def memory_read_triton(query, memory, shrink_thres, cosine, temperature):
    if query.device.type == "cpu" and not triton_interpret_enabled():
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1")
    # Y only where the backward's plan uses it, and only when a backward can follow.
    save_y = (torch.is_grad_enabled() and (query.requires_grad or memory.requires_grad)
              and not atomic_backward_enabled()
              and backward_query_plan(_block_c(query.shape[1]), query.dtype, query.device,
                                      _dot_precision(query.dtype), shrink_thres > 0)
              == "forward_y")
    read, entropy, _, _ = triton_memory_read_fwd(query, memory, shrink_thres, cosine,
                                                 temperature, save_y)
    return read, entropy
