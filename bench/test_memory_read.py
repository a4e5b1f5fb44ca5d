"""Benchmarks of the memory read: each fused backend against what a user would use instead.

Cases: "eager" (python_ref, the reference as written), "compile" (torch.compile of the same
function), every fused backend available on the device ("triton" and "cuda" on GPU, "cpp" on
the CPU; Triton under its CPU interpreter is not timed), and on GPU "sdpa": torch's
scaled_dot_product_attention with the same (Q, N, C), keys = values = memory, as the attention
ceiling (it does less work: no normalisation, no shrinkage, no entropy).

Modes (as in Liger-Kernel): "forward" (inputs require grad, so the forward saves what
backward needs), "backward" (the backward alone, after an untimed forward), "full" (both).

Timing: host clock; each timed call ends with torch.cuda.synchronize() on GPU and each setup
synchronises before it, so a round measures exactly one call. Warm-up rounds (and the compile
of torch.compile) run before timing; the round count adapts to the call's duration. On GPU,
inputs that fit in L2 are rotated among copies so that rounds do not start from a warm cache.

Peak memory (extra_info["peak_mem_bytes"]): one extra untimed call after the timed rounds;
the peak over that call of memory above what was allocated right before it (inputs, and for
"backward" the forward's saved graph). GPU: torch.cuda.max_memory_allocated. CPU: the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs) after returning freed
heap to the OS with malloc_trim; see bench/results/README.md.
"""

from __future__ import annotations

import ctypes
import gc
import math
import time

import pytest
import torch
import torch.nn.functional as F

import memae_fused
import python_ref
from memae_fused import backends as memae_backends

from bench import costs
from bench.conftest import SHRINK_FACTOR, SIMILARITY, TEMPERATURE

FUSED_CANDIDATES = {"cuda": ["triton", "cuda"], "cpu": ["cpp"]}
# Model FLOPs in units of 2*Q*N*C, the same useful work counted for every case: forward =
# logits + read, backward = the four products of their gradients. Each case's own count
# (the fused kernels recompute the logits) comes from bench/costs.py.
MODEL_FLOP_UNITS = {"forward": 2, "backward": 4, "full": 6}
COST_PARTS = {"forward": "forward", "backward": "backward", "full": "total"}


def own_flops(case, mode, dtype, q, n, c):
    """The FLOPs the case itself executes (bench/costs.py), None for SDPA."""
    if case == "sdpa":
        return None
    shrink = SHRINK_FACTOR > 0
    return costs.units(case, costs.cost_dtype(dtype, case), shrink, c, COST_PARTS[mode],
                       SIMILARITY) * 2 * q * n * c


def cases_for(device):
    return ["eager", "compile"] + FUSED_CANDIDATES[device] + (["sdpa"] if device == "cuda" else [])


def pytest_generate_tests(metafunc):
    s = metafunc.config.memae_bench
    cases = cases_for(s.device)
    if "perf_spec" in metafunc.fixturenames:
        specs = [(p, m, c) for p in s.perf for m in s.modes for c in cases]
        metafunc.parametrize("perf_spec", specs, ids=[f"{p.id}-{m}-{c}" for p, m, c in specs])
    if "sweep_spec" in metafunc.fixturenames:
        specs = [(p, m, c) for p in s.sweep for m in s.sweep_modes for c in cases]
        metafunc.parametrize("sweep_spec", specs, ids=[f"{p.id}-{m}-{c}" for p, m, c in specs])


# ---------------------------------------------------------------------------------------------
# The functions timed. Two copies of the reference wrapper, so that the static and the dynamic
# torch.compile of it keep separate Dynamo caches (a cache belongs to a code object).

def reference_read_static(query, memory):
    res = python_ref.memory_read(query, memory, shrink_thres=SHRINK_FACTOR / memory.shape[0],
                                 similarity=SIMILARITY, temperature=TEMPERATURE)
    return res.read, res.entropy


def reference_read_dynamic(query, memory):
    res = python_ref.memory_read(query, memory, shrink_thres=SHRINK_FACTOR / memory.shape[0],
                                 similarity=SIMILARITY, temperature=TEMPERATURE)
    return res.read, res.entropy


torch._dynamo.config.cache_size_limit = 256
torch._dynamo.config.accumulated_cache_size_limit = 1024
if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
    # Never time a silent fallback to eager.
    torch._dynamo.config.fail_on_recompile_limit_hit = True

_compiled = {}


def compiled_reference(dynamic):
    if dynamic not in _compiled:
        fn = reference_read_dynamic if dynamic else reference_read_static
        _compiled[dynamic] = torch.compile(fn, dynamic=dynamic)
    return _compiled[dynamic]


def fused_read(backend):
    def run(query, memory):
        res = memae_fused.memory_read(query, memory, shrink_thres=SHRINK_FACTOR / memory.shape[0],
                                      similarity=SIMILARITY, temperature=TEMPERATURE,
                                      backend=backend)
        return res.read, res.entropy
    return run


def sdpa_read(query, memory):
    kv = memory[None, None]
    return (F.scaled_dot_product_attention(query[None, None], kv, kv)[0, 0],)


def sdpa_backend_name(query, memory):
    try:
        kv = memory[None, None]
        choice = torch._fused_sdp_choice(query[None, None], kv, kv)
        return torch.nn.attention.SDPBackend(choice).name
    except Exception:  # private API; only informative
        return "unknown"


def case_function(case, settings, problem):
    """(function (query, memory) -> outputs, reason to skip or None)."""
    if case == "eager":
        return reference_read_static, None
    if case == "compile":
        dynamic = problem.sweep or settings.fast
        return compiled_reference(dynamic), None
    if case == "sdpa":
        return sdpa_read, None
    if case == "triton" and settings.device == "cpu":
        return None, "triton runs on the CPU only under its interpreter, which is not timed"
    reason = memae_backends.unavailable_reason(case, torch.device(settings.device))
    if case == "triton" and reason is None:
        from memae_fused.backends.triton import triton_interpret_enabled

        if triton_interpret_enabled():
            reason = "TRITON_INTERPRET is set: the interpreter is not timed"
    if reason is not None:
        return None, f"backend {case!r} unavailable: {reason}"
    return fused_read(case), None


# ---------------------------------------------------------------------------------------------
# Inputs

def make_inputs(problem, device, seed):
    gen = torch.Generator(device=device).manual_seed(seed)
    query = torch.randn(problem.q, problem.c, generator=gen, device=device)
    memory = torch.randn(problem.n, problem.c, generator=gen, device=device)
    memory *= torch.rand(problem.n, 1, generator=gen, device=device) + 0.5
    dtype = problem.torch_dtype
    return query.to(dtype).requires_grad_(), memory.to(dtype).requires_grad_()


def rotation_count(problem, device):
    """Copies of the inputs to cycle through: enough to overflow L2 when one set fits in it."""
    if device != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20)
    nbytes = (problem.q + problem.n) * problem.c * torch.finfo(problem.torch_dtype).bits // 8
    if nbytes >= l2:
        return 1
    return min(16, math.ceil(3 * l2 / nbytes))


# ---------------------------------------------------------------------------------------------
# Peak memory around one call

_libc = None


def _malloc_trim():
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _proc_status_kib(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def peak_memory(device, call):
    """(bytes above the pre-call level at the call's peak, method) for one call()."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, "torch.cuda.max_memory_allocated"
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (the peak RSS) to the current RSS
        base = _proc_status_kib("VmRSS")
    except OSError:
        return None, "unavailable (no writable /proc/self/clear_refs)"
    call()
    return (_proc_status_kib("VmHWM") - base) * 1024, "process peak RSS (VmHWM after clear_refs)"


# ---------------------------------------------------------------------------------------------
# The benchmark body shared by the performance shapes and the sweep

def run_case(benchmark, settings, problem, mode, case):
    device = settings.device
    if settings.time_left() <= 0:
        pytest.skip(f"time budget of {settings.budget_s:.0f} s used up")
    fn, reason = case_function(case, settings, problem)
    if fn is None:
        pytest.skip(reason)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    n_sets = rotation_count(problem, device)
    try:
        input_sets = [make_inputs(problem, device, seed) for seed in range(n_sets)]
        # The first call compiles (torch.compile, Triton autotuning) and gives the outputs'
        # shapes and dtypes for the output gradients.
        compile_start = time.perf_counter()
        outputs = fn(*input_sets[0])
        sync()
        first_call_s = time.perf_counter() - compile_start
        gen = torch.Generator(device=device).manual_seed(1234)
        grads = tuple(torch.randn(o.shape, generator=gen, device=device).to(o.dtype) for o in outputs)
        del outputs
        next_set = iter(range(1 << 62))

        def pick_inputs():
            return input_sets[next(next_set) % n_sets]

        def forward(query, memory):
            fn(query, memory)
            sync()

        def full(query, memory):
            torch.autograd.grad(fn(query, memory), (query, memory), grads)
            sync()

        def backward(outputs, query, memory):
            torch.autograd.grad(outputs, (query, memory), grads)
            sync()

        if mode == "backward":
            def setup():
                query, memory = pick_inputs()
                outputs = fn(query, memory)
                sync()
                return (outputs, query, memory), {}
            target = backward
        else:
            def setup():
                sync()
                return pick_inputs(), {}
            target = forward if mode == "forward" else full

        # One more untimed call where a first run may still compile or autotune (the backward
        # of torch.compile, GPU kernels); then one call whose duration sets the round count.
        if device == "cuda" or case == "compile":
            args, _ = setup()
            target(*args)
        args, _ = setup()
        t0 = time.perf_counter()
        target(*args)
        one_call_s = time.perf_counter() - t0
        del args
        rounds = max(settings.min_rounds,
                     min(settings.max_rounds, math.ceil(settings.target_s / max(one_call_s, 1e-6))))

        benchmark.group = f"{device} {problem.dtype} Q={problem.q} N={problem.n} C={problem.c} {mode}"
        benchmark.extra_info.update(
            case=case, mode=mode, device=device, dtype=problem.dtype, q=problem.q, n=problem.n,
            c=problem.c, sweep=problem.sweep, similarity=SIMILARITY, temperature=TEMPERATURE,
            shrink_thres=SHRINK_FACTOR / problem.n, threads=settings.threads,
            model_flops=MODEL_FLOP_UNITS[mode] * 2 * problem.q * problem.n * problem.c,
            first_call_s=round(first_call_s, 4), input_sets=n_sets,
        )
        benchmark.extra_info["own_flops"] = own_flops(case, mode, problem.dtype, problem.q,
                                                      problem.n, problem.c)
        if case == "compile":
            benchmark.extra_info["compile_dynamic"] = problem.sweep or settings.fast
        if case == "sdpa":
            benchmark.extra_info["sdpa_backend"] = sdpa_backend_name(*input_sets[0])

        benchmark.pedantic(target, setup=setup, rounds=rounds,
                           warmup_rounds=settings.warmup_rounds, iterations=1)

        args, _ = setup()
        peak, method = peak_memory(device, lambda: target(*args))
        del args
        benchmark.extra_info.update(peak_mem_bytes=peak, peak_mem_method=method)
    except torch.OutOfMemoryError as exc:
        pytest.skip(f"out of memory: {str(exc).splitlines()[0]}")
    finally:
        input_sets = grads = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def test_perf(benchmark, settings, perf_spec):
    problem, mode, case = perf_spec
    run_case(benchmark, settings, problem, mode, case)


def test_sweep(benchmark, settings, sweep_spec):
    problem, mode, case = sweep_spec
    run_case(benchmark, settings, problem, mode, case)
