"""Registers, spills, shared memory and matrix instructions of the Triton kernels per tile
shape, without a GPU.

    python bench/gpu/triton_resources.py [--arch 90] [--jobs 2] [--out FILE.json]
    python bench/gpu/triton_resources.py --check     (only the shapes tile_config picks)

Compiles each kernel ahead of time for the target (Triton's own compiler and ptxas, no driver)
and reads the cubin's resource use with the cuobjdump that ships with Triton. A tile shape
that spills (stack > 0) or needs more shared memory than an SM has fails or crawls on the GPU,
whatever its speed would otherwise be; tile_config must pick shapes that do neither. The PTX
says which tensor-core instructions the products became: Hopper's warpgroup wgmma (HGMMA in
SASS) where a tile gives each warpgroup 64 rows, else the older mma.sync (HMMA), which runs
Hopper's tensor cores at a fraction of their rate. Speed itself needs the GPU:
bench/gpu/tune_triton_tiles.py.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from memae_fused.backends import triton as triton_kernels  # noqa: E402

# Shared memory a block may use on the target (H100/H200: 227 KiB; A100: 163 KiB).
SHARED_LIMIT = {90: 232448, 80: 166912}
# Each tile_config kernel's launches: the sweep compiles the first (the heaviest: shrinkage,
# separate keys and values), --check all of them, since each is a separate compile. The
# backward's third is the released MemAE code's configuration (shrinkage, dot similarity);
# the forward's and the dquery pass's last, lam = 0 with cosine similarity (MemAE-nonSpar,
# DAAD, MNAD): the one-sweep forward and the only query-major pass at lam = 0.
KERNELS = {
    "forward": [(triton_kernels._fwd_kernel,
                 dict(SHRINK=True, SPLIT=False, SHARED_KV=False, SAVE_Y=False)),
                (triton_kernels._fwd_kernel,
                 dict(SHRINK=False, SPLIT=True, SHARED_KV=True, SAVE_Y=False)),
                (triton_kernels._row_max_sum_kernel, dict(SHARED_KV=False, SAVE_Y=False)),
                (triton_kernels._fwd_kernel,
                 dict(SHRINK=False, SPLIT=False, SHARED_KV=False, SAVE_Y=False)),
                # the forward_y plan's forward (Y accumulated in sweep 1), unsplit and split
                (triton_kernels._fwd_kernel,
                 dict(SHRINK=True, SPLIT=False, SHARED_KV=False, SAVE_Y=True)),
                (triton_kernels._row_max_sum_kernel, dict(SHARED_KV=False, SAVE_Y=True))],
    # The query-major backward's three passes (triton_kernels.backward_query_plan).
    **{name: [(triton_kernels._bwd_query_kernel, dict(SHRINK=True, SHARED_KV=False, PASS=pass_)),
              (triton_kernels._bwd_query_kernel, dict(SHRINK=False, SHARED_KV=True, PASS=pass_)),
              (triton_kernels._bwd_query_kernel, dict(SHRINK=True, SHARED_KV=True, PASS=pass_))]
       for name, pass_ in (("backward_query", "fused"), ("backward_row_term", "row_term"))},
    "backward_dquery": [
        (triton_kernels._bwd_query_kernel, dict(SHRINK=True, SHARED_KV=False, PASS="dquery")),
        (triton_kernels._bwd_query_kernel, dict(SHRINK=False, SHARED_KV=True, PASS="dquery")),
        (triton_kernels._bwd_query_kernel, dict(SHRINK=True, SHARED_KV=True, PASS="dquery")),
        (triton_kernels._bwd_query_kernel, dict(SHRINK=False, SHARED_KV=False, PASS="dquery"))],
    "backward_x_and_r": [
        (triton_kernels._bwd_query_kernel, dict(SHRINK=True, SHARED_KV=False, PASS="x_and_r")),
        (triton_kernels._bwd_query_kernel, dict(SHRINK=True, SHARED_KV=True, PASS="x_and_r"))],
    "backward_memory": [
        (triton_kernels._bwd_memory_kernel, dict(SHRINK=True, SHARED_KV=False, ATOMIC_DQ=False)),
        (triton_kernels._bwd_memory_kernel, dict(SHRINK=False, SHARED_KV=True, ATOMIC_DQ=False)),
        (triton_kernels._bwd_memory_kernel, dict(SHRINK=True, SHARED_KV=True, ATOMIC_DQ=False))],
    # The atomic plan's (asked for with MEMAE_FUSED_ATOMIC_BACKWARD=1), at tile_config's
    # memory-major tiles.
    "backward_memory_atomic": [
        (triton_kernels._bwd_memory_kernel, dict(SHRINK=True, SHARED_KV=False, ATOMIC_DQ=True)),
        (triton_kernels._bwd_memory_kernel, dict(SHRINK=False, SHARED_KV=True, ATOMIC_DQ=True))],
}
# Which query-major passes each backward_query_plan runs.
# (row_term_first runs only where a forward_y backward finds no saved Y: a forward under
# no_grad followed by a backward, which autograd cannot do; its passes are still checked.)
PLAN_PASSES = {"fused": {"backward_query"}, "dquery_only": {"backward_dquery"},
               "forward_y": {"backward_x_and_r", "backward_row_term", "backward_dquery"}}


def launched(kernel_name, variant, dtype, block_c, precision) -> bool:
    """Whether the op launches this kernel variant at this dtype and width."""
    _, extra = KERNELS[kernel_name][variant]
    gpu = torch.device("cuda")
    if extra.get("SAVE_Y"):
        return triton_kernels.backward_query_plan(block_c, dtype, gpu, precision, True) == "forward_y"
    if kernel_name not in ("backward_query", "backward_row_term", "backward_dquery",
                           "backward_x_and_r"):
        return True
    plan = triton_kernels.backward_query_plan(block_c, dtype, gpu, precision, extra["SHRINK"])
    return kernel_name in PLAN_PASSES[plan]
# (name, element type, dot precision): the dtypes users run and float64 for the tests.
MODES = {
    "bfloat16": ("bf16", "ieee", torch.bfloat16),
    "float16": ("fp16", "ieee", torch.float16),
    "float32": ("fp32", "ieee", torch.float32),
    "float32-tf32": ("fp32", "tf32", torch.float32),
    "float64": ("fp64", "ieee", torch.float64),
}
CANDIDATES = [(64, 64, 4, 2), (64, 64, 8, 2), (64, 32, 4, 2), (64, 32, 8, 2), (32, 64, 8, 2),
              (32, 32, 4, 2), (32, 32, 8, 2), (16, 32, 4, 2), (16, 16, 4, 1),
              # 64 rows with a narrow sweep tile: wgmma at widths where 64 x 32 spills
              (64, 16, 8, 2), (64, 16, 4, 2), (16, 64, 8, 2),
              # two warpgroups of 64 rows: for kernels without a C-wide accumulator
              (128, 64, 8, 2), (128, 32, 8, 2)]
BLOCK_CS = [64, 128, 256, 512]
INT_ARGS = {"Q", "N", "C", "n_per_split", "q_per_split"}
DATA_ARGS = {"ZQ", "MK", "MV", "G", "READ", "ENT"}  # the rest: accumulation dtype


def _tool(name):
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_usage(kernel_name, mode, block_c, tiles, arch, variant=0, specialize=False):
    """Resource use of one compiled kernel: dict(regs, stack, shared) or dict(error).
    specialize: compile as the JIT does for a launch whose pointers are 16-byte aligned (torch's
    allocations always are) and whose integers are multiples of 16 (Q, N and C of the usual
    shapes): every argument then carries tt.divisibility 16, which lets the compiler vectorise
    loads and pipeline them with cp.async. Without it, the case of odd Q, N or C."""
    fn, extra = KERNELS[kernel_name][variant]
    elem, prec, _ = MODES[mode]
    block_q, block_n, num_warps, num_stages = tiles
    consts = dict(extra, BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_C=block_c, PREC=prec,
                  UPCAST=False)
    acc = "fp64" if elem == "fp64" else "fp32"
    signature = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in consts:
            signature[name] = "constexpr"
        elif name in INT_ARGS:
            signature[name] = "i32"
        else:
            signature[name] = "*" + (elem if name in DATA_ARGS else acc)
    attrs = {}
    if specialize:
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
                 if name not in consts}
    try:
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts,
                                            attrs=attrs),
                                  target=GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=num_warps, num_stages=num_stages))
    except Exception as exc:  # a shape Triton cannot lower counts as unusable
        return dict(error=repr(exc).splitlines()[0][:200])
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as fh:
        fh.write(compiled.asm["cubin"])
    try:
        out = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", fh.name],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(fh.name)
    usage = dict(re.findall(r"(REG|STACK):(\d+)", out))
    return dict(regs=int(usage["REG"]), stack=int(usage["STACK"]), shared=compiled.metadata.shared,
                mma=matrix_instructions(compiled.asm["ptx"]))


def matrix_instructions(ptx: str) -> str:
    """The tensor-core instructions in a kernel's PTX: "wgmma", "mma.sync" or "none" (FMA)."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    return "mma.sync" if re.search(r"\bmma\.sync", ptx) else "none"


# Stack bytes per thread that --check tolerates in a pick: a few spilled registers, not the
# kilobytes of a shape that is too large (triton_kernels.KNOWN_SPILLS allows more where no
# candidate did better).
SMALL_SPILL = 128


def usable(usage, arch, spill=0):
    return ("error" not in usage and usage["stack"] <= spill
            and usage["shared"] <= SHARED_LIMIT[arch])


def propose(results):
    """Per (mode, kernel, block_c), the usable shape that uses wgmma if any does, then the
    largest tile (block_q x block_n), the least shared memory, the fewest registers: a rule
    from resources and instructions until the GPU has timed them. A shape counts with its
    worst result over the runs given (Triton versions, launch variants): its largest spill,
    its most shared memory, wgmma only if every compile had it."""
    merged = {}
    for r in results:
        key = (r["mode"], r["kernel"], r["block_c"], tuple(r["tiles"]))
        if "error" in r or r["shared"] > SHARED_LIMIT.get(r.get("arch", 90), SHARED_LIMIT[90]):
            merged[key] = None
            continue
        if key in merged and merged[key] is None:
            continue
        seen = merged.setdefault(key, dict(stack=0, shared=0, regs=0, wgmma=True))
        seen.update(stack=max(seen["stack"], r["stack"]), shared=max(seen["shared"], r["shared"]),
                    regs=max(seen["regs"], r["regs"]),
                    wgmma=seen["wgmma"] and r.get("mma") == "wgmma")
    best = {}
    for (mode, kernel, block_c, tiles), seen in merged.items():
        # Spill-free first; where none is, the least spill within SMALL_SPILL.
        if seen is None or seen["stack"] > SMALL_SPILL:
            continue
        rank = (seen["stack"], not seen["wgmma"], -tiles[0] * tiles[1], seen["shared"],
                seen["regs"])
        key = (mode, kernel, block_c)
        if key not in best or rank < best[key][0]:
            best[key] = (rank, tiles, "wgmma" if seen["wgmma"] else "other")
    return {key: (tiles, rank[0], mma) for key, (rank, tiles, mma) in sorted(best.items())}


def _job(args):
    return args, compile_usage(*args)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_LIMIT))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--modes", default=",".join(m for m in MODES if m != "float16"),
                        help="operand modes (float16 compiles like bfloat16: --check adds it)")
    parser.add_argument("--kernels", default=",".join(KERNELS),
                        help="which of tile_config's kernels to compile")
    parser.add_argument("--block-c", default=",".join(map(str, BLOCK_CS)),
                        help="padded channel counts to compile for")
    parser.add_argument("--tiles", help="candidate shapes instead of the built-in list, as "
                                        "BQ,BN,WARPS,STAGES;...")
    parser.add_argument("--check", action="store_true",
                        help="only the tile shapes that tile_config picks; exit 1 if any is unusable")
    parser.add_argument("--all-variants", action="store_true",
                        help="compile every launch variant of each kernel, not only the first")
    parser.add_argument("--specialize", action="store_true",
                        help="compile as the JIT does for aligned shapes (every argument "
                             "divisible by 16; see compile_usage)")
    parser.add_argument("--out", help="write the results as JSON")
    parser.add_argument("--propose", nargs="+", metavar="RESULTS.json",
                        help="print the best usable shape per case from earlier --out files")
    args = parser.parse_args()

    if args.propose:
        results = []
        for path in args.propose:
            with open(path) as fh:
                results += json.load(fh)["results"]
        for (mode, kernel_name, block_c), (tiles, spill, mma) in propose(results).items():
            print(f"{mode:13s} {kernel_name:16s} C<={block_c:<4d} {str(tiles):17s} {mma:8s}"
                  + (f"  spills {spill} B" if spill else ""))
        return 0

    gpu = torch.device("cuda")  # tile_config only looks at the type
    jobs = []
    candidates = CANDIDATES
    if args.tiles:
        candidates = [tuple(map(int, t.split(","))) for t in args.tiles.split(";")]
    block_cs = [int(c) for c in args.block_c.split(",")]
    if args.check:
        block_cs = [16, 32] + block_cs  # the narrow tiles too: ptxas is not monotonic in width
    modes = list(MODES) if args.check else args.modes.split(",")
    for mode, kernel_name, block_c in itertools.product(modes, args.kernels.split(","),
                                                         block_cs):
        if triton_kernels.unsupported_reason(MODES[mode][2], block_c, gpu) is not None:
            continue  # the op refuses these inputs with a clear error (or "auto" moves on)
        picked = tuple(triton_kernels.tile_config(kernel_name, block_c, MODES[mode][2], gpu,
                                                 MODES[mode][1]))
        shapes = [picked] if args.check else list(dict.fromkeys([picked] + candidates))
        # Only the variants the op launches (the query-major passes depend on the plan); the
        # sweep compiles the first of them.
        variants = [v for v in range(len(KERNELS[kernel_name]))
                    if launched(kernel_name, v, MODES[mode][2], block_c, MODES[mode][1])]
        if not (args.check or args.all_variants):
            variants = variants[:1]
        jobs += [(kernel_name, mode, block_c, tiles, args.arch, variant, args.specialize)
                 for tiles in shapes for variant in variants]

    results, bad = [], 0
    print(f"triton {triton.__version__}, sm_{args.arch}: {len(jobs)} compiles", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        for (kernel_name, mode, block_c, tiles, arch, variant, _), usage in pool.map(_job, jobs):
            picked = tiles == tuple(triton_kernels.tile_config(
                kernel_name, block_c, MODES[mode][2], gpu, MODES[mode][1]))
            allowed = 0
            if args.check:
                operand = triton_kernels._operand_type(MODES[mode][2], MODES[mode][1])
                allowed = max(SMALL_SPILL, triton_kernels.KNOWN_SPILLS.get(
                    (operand, kernel_name, block_c), 0))
            ok = usable(usage, arch, allowed)
            bad += picked and not ok
            results.append(dict(kernel=kernel_name, mode=mode, block_c=block_c,
                                tiles=list(tiles), picked=picked, usable=ok, variant=variant,
                                **usage))
            print(f"{mode:13s} {kernel_name:16s}/{variant} C<={block_c:<4d} {str(tiles):17s} "
                  f"{'PICKED' if picked else '      '} {'ok ' if ok else 'BAD'} {usage}",
                  flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(triton=triton.__version__, arch=args.arch,
                           specialized=args.specialize, results=results), fh, indent=1)
    print(f"{bad} picked shape(s) unusable" if bad else "every picked shape is usable")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
