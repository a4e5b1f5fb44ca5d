"""Turn pytest-benchmark JSON from bench/ into a markdown report and a plot against N.

  python bench/report.py RUN.json [MORE.json ...] --out-dir bench/results [--summary]
                        [--capacity capacity.json] [--tune tune.json]

writes <stem>.md (tables of ratios), <stem>.png (time and peak memory against N from the
sweep; needs matplotlib) and <stem>.json (the input runs merged), where <stem> is
<date>-<HHMM UTC>-<device>-<device name>. --md/--png/--json name the files explicitly instead;
--summary prints a short table; --stem prints the stem only; --capacity and --tune add the
tables of bench/gpu/capacity.py and bench/gpu/tune_triton_tiles.py from their JSON.

The report opens with the issues' performance targets (TARGETS below: speed-ups over eager
and torch.compile, the forward against SDPA, cuda against triton, the CPU kernel's speed and
memory, the capacity check) judged on the run's medians, then the tables.

Ratios are of median times. "x eager" and "x compile": the case's speed-up over the eager
reference and over its torch.compile. "of SDPA": SDPA's time over the case's (1.0 = as fast as
the attention ceiling). Model TFLOP/s count the same FLOPs for every case (forward 2, backward
4, full 6, in units of 2*Q*N*C); own-count TFLOP/s what each implementation executes
(bench/costs.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import OrderedDict

CASE_ORDER = ["eager", "compile", "triton", "cuda", "cpp", "sdpa"]
CASE_LABELS = {"eager": "eager python_ref", "compile": "torch.compile(python_ref)",
               "triton": "triton", "cuda": "cuda", "cpp": "cpp", "sdpa": "SDPA (ceiling)"}
MODE_ORDER = ["forward", "backward", "full"]

# Dense tensor-core peaks (TFLOP/s) from the vendor data sheets: bf16, and TF32 for float32.
# Matched by substring of the device name, most specific first.
GPU_PEAK_TFLOPS = [
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100 NVL", {"bfloat16": 835.0, "float32": 418.0}),
    ("H100", {"bfloat16": 989.4, "float32": 494.7}),
    ("H200", {"bfloat16": 989.4, "float32": 494.7}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
]


def load_runs(paths):
    """(machine_info, commit_info, datetime, benchmarks) merged over the files, in order."""
    runs = [json.load(open(p)) for p in paths]
    if not runs:
        raise SystemExit("no input files")
    benchmarks = [b for r in runs for b in r.get("benchmarks", []) if "case" in b.get("extra_info", {})]
    first = runs[0]
    return first.get("machine_info", {}), first.get("commit_info", {}), first.get("datetime", ""), benchmarks


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-")


def stem_of(machine_info, when):
    info = machine_info.get("memae_bench", {})
    name = info.get("device_name") or machine_info.get("cpu", {}).get("brand_raw", "unknown")
    fast = "-fast" if info.get("fast") else ""
    stamp = f"{when[:10]}-{when[11:13]}{when[14:16]}" if len(when) >= 16 else "undated"
    return f"{stamp}-{info.get('device', 'unknown')}-{slug(name)}{fast}"


def peak_tflops(machine_info, dtype):
    """(peak TFLOP/s, description) for the report's '% of peak' column."""
    info = machine_info.get("memae_bench", {})
    if info.get("device") == "cuda":
        name = info.get("device_name", "")
        for key, peaks in GPU_PEAK_TFLOPS:
            if key in name and dtype in peaks:
                kind = "bf16" if dtype == "bfloat16" else "TF32"
                return peaks[dtype], f"{name} dense {kind} tensor-core peak (data sheet)"
    measured = info.get("matmul_tflops", {}).get(dtype)
    if measured:
        size = info.get("matmul_size")
        return measured, f"measured torch.mm rate, {size}x{size}x{size} {dtype} (the higher of start and end)"
    return None, "no peak known"


def fmt_time(seconds):
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def fmt_ratio(x):
    return "-" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


def fmt_mib(nbytes):
    if nbytes is None:
        return "n/a"
    return f"{nbytes / 2**20:.0f}" if abs(nbytes) >= 10 * 2**20 else f"{nbytes / 2**20:.2f}"


def index(benchmarks, sweep):
    """{(device, dtype, q, n, c): {mode: {case: benchmark}}} in a stable order."""
    table = OrderedDict()
    for b in benchmarks:
        e = b["extra_info"]
        if bool(e.get("sweep")) != sweep:
            continue
        key = (e["device"], e["dtype"], e["q"], e["n"], e["c"])
        table.setdefault(key, {}).setdefault(e["mode"], {})[e["case"]] = b
    return table


def case_label(b):
    e = b["extra_info"]
    label = CASE_LABELS.get(e["case"], e["case"])
    if e.get("sdpa_backend"):
        label += f", {e['sdpa_backend'].lower()}"
    if e.get("compile_dynamic"):
        label += ", dynamic"
    return label


def ordered_cases(cases):
    return [c for c in CASE_ORDER if c in cases] + sorted(c for c in cases if c not in CASE_ORDER)


def row_values(b, by_case, peak):
    median = b["stats"]["median"]
    e = b["extra_info"]

    def speedup(other):
        return by_case[other]["stats"]["median"] / median if other in by_case else None

    tflops = e["model_flops"] / median / 1e12
    own = e.get("own_flops")
    return {
        "own_tflops": None if own is None else own / median / 1e12,
        "median": median,
        "iqr": b["stats"].get("iqr"),
        "rounds": b["stats"].get("rounds"),
        "x_eager": speedup("eager"),
        "x_compile": speedup("compile"),
        "of_sdpa": speedup("sdpa"),
        "tflops": tflops,
        "pct_peak": 100 * tflops / peak if peak else None,
        "peak_mem": e.get("peak_mem_bytes"),
    }


def machine_lines(machine_info, commit_info, when):
    info = machine_info.get("memae_bench", {})
    lines = [f"- Date: {when}", f"- Device: {info.get('device')}: {info.get('device_name')}"]
    if info.get("device") == "cuda":
        lines.append(f"- GPU: {info.get('sm_count')} SMs, capability {info.get('capability')}, "
                     f"{info.get('gpu_memory_gib')} GiB, L2 {info.get('l2_cache_mib')} MiB, "
                     f"driver {info.get('driver')}; TF32 matmul in torch: {info.get('allow_tf32_matmul')}")
    lines.append(f"- Host CPU: {info.get('cpu_name')}, {info.get('cpu_count')} logical CPUs; "
                 f"torch threads {info.get('threads')} (inter-op {info.get('interop_threads')}); "
                 f"load average at the end (1/5/15 min): {info.get('loadavg_at_end')}")
    lines.append(f"- Software: Python {machine_info.get('python_version')}, torch {info.get('torch')} "
                 f"(CUDA {info.get('torch_cuda')}), triton {info.get('triton')}; "
                 f"{machine_info.get('system')} {machine_info.get('release')}")
    lines.append("- Measured torch.mm rate (best of 5 at the start / at the end of the run): " + ", ".join(
        f"{d} {info.get('matmul_tflops_start', {}).get(d, '?')} / {info.get('matmul_tflops_end', {}).get(d, v)} TFLOP/s"
        for d, v in info.get("matmul_tflops", {}).items()) + f" ({info.get('matmul_size')}^3)")
    lines.append(f"- Problem: similarity {info.get('similarity')}, temperature {info.get('temperature')}, "
                 f"shrink_thres {info.get('shrink_thres')}; fast mode: {info.get('fast')}")
    if commit_info:
        lines.append(f"- Commit: {commit_info.get('id', '?')[:12]} on {commit_info.get('branch')}"
                     f"{' (dirty working tree)' if commit_info.get('dirty') else ''}")
    return lines


def perf_markdown(machine_info, benchmarks):
    out = []
    for (device, dtype, q, n, c), modes in index(benchmarks, sweep=False).items():
        peak, peak_desc = peak_tflops(machine_info, dtype)
        out += [f"### {device} {dtype}, Q={q}, N={n}, C={c}", ""]
        out += ["| mode | case | median ms | IQR ms | rounds | x eager | x compile | of SDPA "
                "| model TFLOP/s | own-count TFLOP/s | % of peak | peak MiB |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        over_peak = False
        for mode in [m for m in MODE_ORDER if m in modes]:
            by_case = modes[mode]
            for case in ordered_cases(by_case):
                v = row_values(by_case[case], by_case, peak)
                over_peak = over_peak or (v["pct_peak"] or 0) > 100
                pct = "-" if v["pct_peak"] is None else f"{v['pct_peak']:.1f}"
                own = "-" if v["own_tflops"] is None else f"{v['own_tflops']:.3g}"
                out.append(
                    f"| {mode} | {case_label(by_case[case])} | {fmt_time(v['median'])} "
                    f"| {fmt_time(v['iqr'])} | {v['rounds']} | {fmt_ratio(v['x_eager'])} "
                    f"| {fmt_ratio(v['x_compile'])} | {fmt_ratio(v['of_sdpa'])} "
                    f"| {v['tflops']:.3g} | {own} | {pct} | {fmt_mib(v['peak_mem'])} |")
        out += ["", f"Peak for '% of peak': {peak} TFLOP/s, {peak_desc}."]
        if over_peak:
            out += ["Cases above 100 % beat the measured torch.mm reference: that single "
                    "matmul ran slower than the case's matrix products (other load on the "
                    "machine while it was measured, or a shape that suits the BLAS better); "
                    "read the column as relative only."]
        out += [""]
    return out


def sweep_series(benchmarks):
    """{(device, dtype, q, c, mode): {case: [(n, median_s, peak_bytes)]}}."""
    series = OrderedDict()
    for (device, dtype, q, n, c), modes in index(benchmarks, sweep=True).items():
        for mode, by_case in modes.items():
            for case, b in by_case.items():
                series.setdefault((device, dtype, q, c, mode), {}).setdefault(case, []).append(
                    (n, b["stats"]["median"], b["extra_info"].get("peak_mem_bytes")))
    for by_case in series.values():
        for points in by_case.values():
            points.sort()
    return series


def sweep_markdown(benchmarks):
    out = []
    for (device, dtype, q, c, mode), by_case in sweep_series(benchmarks).items():
        cases = ordered_cases(by_case)
        ns = sorted({n for pts in by_case.values() for n, _, _ in pts})
        out += [f"### Sweep over N: {device} {dtype}, Q={q}, C={c}, {mode}", "",
                "median ms / peak MiB" + ("; torch.compile with dynamic=True (one compile for all N)"
                                          if "compile" in by_case else ""), "",
                "| N | " + " | ".join(CASE_LABELS.get(k, k) for k in cases) + " |",
                "|---:|" + "---:|" * len(cases)]
        for n in ns:
            cells = []
            for k in cases:
                hit = [(t, m) for nn, t, m in by_case[k] if nn == n]
                cells.append(f"{fmt_time(hit[0][0])} / {fmt_mib(hit[0][1])}" if hit else "-")
            out.append(f"| {n} | " + " | ".join(cells) + " |")
        out.append("")
    return out


# The issues' targets, checked against a run. Each: (issue, target, device, shapes it applies
# to, function (modes of one shape) -> (measured text, met) or None where the cases are missing).
CPU_SPEED_SHAPES = {(4096, 2000, 256), (1024, 20000, 256)}
CPU_MEMORY_SHAPE = (2048, 50000, 256)


def _median(modes, mode, case):
    b = modes.get(mode, {}).get(case)
    return None if b is None else b["stats"]["median"]


def _speedup_at_least(case, other, mode, factor):
    def check(modes):
        mine, theirs = _median(modes, mode, case), _median(modes, mode, other)
        if mine is None or theirs is None:
            return None
        return f"{theirs / mine:.2f}x", theirs / mine >= factor
    return check


def _time_within(case, other, mode, factor):
    def check(modes):
        mine, theirs = _median(modes, mode, case), _median(modes, mode, other)
        if mine is None or theirs is None:
            return None
        return f"{mine / theirs:.2f}x its time", mine <= factor * theirs
    return check


def _never_slower(case, mode, others):
    def check(modes):
        mine = _median(modes, mode, case)
        theirs = [(o, _median(modes, mode, o)) for o in others]
        if mine is None or any(t is None for _, t in theirs):
            return None
        return (", ".join(f"{t / mine:.2f}x {o}" for o, t in theirs),
                all(mine <= t for _, t in theirs))
    return check


def _memory_lower(case, other, mode, factor):
    def check(modes):
        mine = modes.get(mode, {}).get(case)
        theirs = modes.get(mode, {}).get(other)
        if mine is None or theirs is None:
            return None
        a, b = mine["extra_info"].get("peak_mem_bytes"), theirs["extra_info"].get("peak_mem_bytes")
        if not a or not b:
            return None
        return f"{b / a:.1f}x lower", b / a >= factor
    return check


TARGETS = [
    ("3", "triton fwd+bwd >= 3x eager (N >= 10000)", "cuda", lambda q, n, c: n >= 10000,
     _speedup_at_least("triton", "eager", "full", 3.0)),
    ("3", "triton fwd+bwd >= 2x torch.compile (N >= 10000)", "cuda", lambda q, n, c: n >= 10000,
     _speedup_at_least("triton", "compile", "full", 2.0)),
    ("3", "triton fwd+bwd never slower than eager or torch.compile", "cuda", lambda q, n, c: True,
     _never_slower("triton", "full", ("eager", "compile"))),
    ("3", "triton forward within 2x of SDPA (bf16)", "cuda", lambda q, n, c: True,
     _time_within("triton", "sdpa", "forward", 2.0)),
    ("4", "cuda fwd+bwd within 1.5x of triton", "cuda", lambda q, n, c: True,
     _time_within("cuda", "triton", "full", 1.5)),
    ("4", "cuda fwd+bwd faster than torch.compile", "cuda", lambda q, n, c: True,
     _speedup_at_least("cuda", "compile", "full", 1.0)),
    ("4", "cpp fwd+bwd >= 1.5x eager", "cpu", lambda q, n, c: (q, n, c) in CPU_SPEED_SHAPES,
     _speedup_at_least("cpp", "eager", "full", 1.5)),
    ("4", "cpp fwd+bwd peak memory >= 10x lower than eager", "cpu",
     lambda q, n, c: (q, n, c) == CPU_MEMORY_SHAPE, _memory_lower("cpp", "eager", "full", 10.0)),
]


def target_rows(benchmarks):
    """(issue, target, shape, measured, met) for every target a run's cases can judge."""
    rows = []
    for issue, target, device, applies, check in TARGETS:
        for (dev, dtype, q, n, c), modes in index(benchmarks, sweep=False).items():
            if dev != device or not applies(q, n, c):
                continue
            if "SDPA" in target and dtype != "bfloat16":
                continue
            result = check(modes)
            if result is not None:
                rows.append((issue, target, f"{dtype} {q}x{n}x{c}", *result))
    return rows


def capacity_target_rows(capacity):
    """Issue 3's memory target from bench/gpu/capacity.py's results: each fused backend runs the
    largest problem's forward (finite outputs), and its forward + backward peak, extrapolated
    from smaller Q, fits the device, where eager python_ref's peak does not."""
    if capacity.get("device_memory_bytes") is None:
        return []  # the CPU check of the script
    eager = capacity.get("eager", {})
    shape = f"{capacity['dtype']} {capacity['q']}x{capacity['n']}x{capacity['c']}"
    target = "fwd+bwd fits where eager cannot (peak extrapolated from Q/16, Q/8)"
    gib = 2.0 ** 30
    rows = []
    for backend, entry in capacity.get("backends", {}).items():
        forward = entry.get("forward", {})
        both = entry.get("forward_backward_extrapolated", {})
        peak, fits = both.get("peak_bytes"), eager.get("fits_on_device")
        if "error" in entry or peak is None or fits is None:
            reason = entry.get("error") or ("eager's peak not measured" if fits is None
                                            else "forward + backward not measured")
            rows.append(("3", f"{backend} {target}", shape, reason, False))
            continue
        measured = (f"{peak / gib:.1f} GiB peak; eager ~{eager['extrapolated_peak_bytes'] / gib:.0f}"
                    f" GiB of {capacity['device_memory_bytes'] / gib:.0f}")
        rows.append(("3", f"{backend} {target}", shape, measured,
                     bool(forward.get("finite")) and peak < capacity["device_memory_bytes"]
                     and fits is False))
    return rows


def targets_markdown(benchmarks, capacity=None):
    rows = target_rows(benchmarks) + (capacity_target_rows(capacity) if capacity else [])
    lines = []
    if rows:
        lines += ["## Targets", "",
                  "The issues' performance targets, judged on this run's medians.", "",
                  "| issue | target | shape | measured | met |", "|---|---|---|---|---|"]
        lines += [f"| {i} | {t} | {shape} | {m} | {'yes' if ok else 'NO'} |"
                  for i, t, shape, m, ok in rows]
        lines.append("")
    return lines


def capacity_markdown(capacity):
    """The table bench/gpu/capacity.py wrote into its JSON."""
    return ["## Capacity", "", capacity["table"], ""]


def tune_markdown(path):
    """bench/gpu/tune_triton_tiles.py's timings: the backward plans, then each kernel's tile
    shapes, fastest first."""
    with open(path) as fh:
        tune = json.load(fh)
    lines = ["## Triton tile shapes timed", "",
             f"bench/gpu/tune_triton_tiles.py on {tune.get('device')}, torch {tune.get('torch')}, "
             f"Triton {tune.get('triton')}; tiles = (BLOCK_Q, BLOCK_N, warps, stages), "
             "* = tile_config's pick when timed. backward_plan: forward + backward with the "
             "query-major backward in one fused sweep, with Y from the forward (forward_y) or "
             "with R first, each with its picked tiles.", "",
             "| kernel | Q × N × C | dtype | tiles | ms | × fastest |", "|---|---|---|---|---:|---:|"]
    groups = OrderedDict()
    for row in tune["rows"]:
        groups.setdefault((row["kernel"], row["q"], row["n"], row["c"], row["dtype"]), []).append(row)
    for (kernel, q, n, c, dtype), rows in groups.items():
        fastest = min(r["ms"] for r in rows)
        for r in sorted(rows, key=lambda r: r["ms"]):
            tiles = r["tiles"] if isinstance(r["tiles"], str) else (  # a plan, or tiles
                "(" + ", ".join(map(str, r["tiles"])) + ")")
            tiles += " *" if r["default"] else ""
            lines.append(f"| {kernel} | {q} × {n} × {c} | {dtype.replace('torch.', '')} | "
                         f"{tiles} | {r['ms']:.3f} | {r['ms'] / fastest:.2f} |")
    return lines + [""]


def write_markdown(path, machine_info, commit_info, when, benchmarks, png_name, capacity=None,
                   appendix=()):
    lines = ["# memae-fused benchmarks", ""] + machine_lines(machine_info, commit_info, when) + [""]
    lines += [
        "Median of the timed rounds (host clock, synchronised). Modes: forward (inputs require "
        "grad), backward (after an untimed forward), full (forward + backward). Ratios: "
        "x eager / x compile = speed-up over eager python_ref / over its torch.compile; "
        "of SDPA = SDPA time / case time. Model TFLOP/s count forward 2, backward 4, full 6 "
        "units of 2·Q·N·C for every case; own-count TFLOP/s count the matrix work the case "
        "itself does (python -m bench.costs: the fused kernels recompute the logits). Peak MiB: peak memory above what was allocated "
        "before the call (see bench/results/README.md for how it is measured).", ""]
    lines += targets_markdown(benchmarks, capacity)
    perf = perf_markdown(machine_info, benchmarks)
    if perf:
        lines += ["## Performance shapes", ""] + perf
    sweep = sweep_markdown(benchmarks)
    if sweep:
        lines += ["## Scaling with N", ""]
        if png_name:
            lines += [f"![time and peak memory against N]({png_name})", ""]
        lines += sweep
    lines += list(appendix)
    with open(path, "w") as fh:
        fh.write("\n".join(lines).rstrip() + "\n")


def write_plot(path, benchmarks):
    """Time and peak memory against N for every sweep mode; False when nothing to plot."""
    series = sweep_series(benchmarks)
    if not series:
        return False
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is not installed; no plot written", file=sys.stderr)
        return False
    keys = list(series)
    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 4 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        device, dtype, q, c, mode = key
        for case in ordered_cases(series[key]):
            pts = series[key][case]
            ns = [p[0] for p in pts]
            axes[row][0].plot(ns, [p[1] * 1e3 for p in pts], marker="o", label=CASE_LABELS.get(case, case))
            mem = [(n, m / 2**20) for n, _, m in pts if m is not None and m > 0]
            if mem:
                axes[row][1].plot([m[0] for m in mem], [m[1] for m in mem], marker="o",
                                  label=CASE_LABELS.get(case, case))
        for col, ylabel in enumerate(["median time (ms)", "peak memory above inputs (MiB)"]):
            ax = axes[row][col]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("memory slots N")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{device} {dtype} Q={q} C={c}, {mode}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def print_summary(benchmarks, file=sys.stdout):
    """One line per (shape, dtype, mode): each case's median ms and speed-up over eager."""
    rows = []
    for sweep in (False, True):
        for (device, dtype, q, n, c), modes in index(benchmarks, sweep).items():
            for mode in [m for m in MODE_ORDER if m in modes]:
                by_case = modes[mode]
                cells = []
                for case in ordered_cases(by_case):
                    v = row_values(by_case[case], by_case, None)
                    x = f" x{fmt_ratio(v['x_eager'])}" if case != "eager" and v["x_eager"] else ""
                    cells.append(f"{case} {fmt_time(v['median'])}{x}")
                tag = "sweep " if sweep else ""
                rows.append(f"{tag}{device} {dtype:8s} {q}x{n}x{c} {mode:8s} | " + " | ".join(cells))
    print("median ms (x speed-up over eager):", file=file)
    for r in rows:
        print("  " + r, file=file)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    ap.add_argument("--out-dir", help="write <stem>.md, <stem>.png and <stem>.json here")
    ap.add_argument("--md")
    ap.add_argument("--png")
    ap.add_argument("--json-out", dest="json_out")
    ap.add_argument("--capacity", help="bench/gpu/capacity.py's JSON: its table goes in the report")
    ap.add_argument("--tune", help="bench/gpu/tune_triton_tiles.py's JSON: its timings go in the report")
    ap.add_argument("--summary", action="store_true", help="print a short table")
    ap.add_argument("--stem", action="store_true", help="print the file stem and exit")
    args = ap.parse_args(argv)

    paths = [p for p in args.json if os.path.exists(p)]
    for p in set(args.json) - set(paths):
        print(f"report: {p} does not exist; skipped", file=sys.stderr)
    machine_info, commit_info, when, benchmarks = load_runs(paths)
    capacity = None
    if args.capacity:
        with open(args.capacity) as fh:
            capacity = json.load(fh)
    stem = stem_of(machine_info, when)
    if args.stem:
        print(stem)
        return 0
    md, png, merged = args.md, args.png, args.json_out
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        md = md or os.path.join(args.out_dir, stem + ".md")
        png = png or os.path.join(args.out_dir, stem + ".png")
        merged = merged or os.path.join(args.out_dir, stem + ".json")
    if merged:
        with open(merged, "w") as fh:
            json.dump({"machine_info": machine_info, "commit_info": commit_info, "datetime": when,
                       "benchmarks": benchmarks}, fh, indent=1)
    png_written = bool(png) and write_plot(png, benchmarks)
    if md:
        png_name = os.path.relpath(png, os.path.dirname(os.path.abspath(md))) if png_written else None
        appendix = capacity_markdown(capacity) if capacity else []
        if args.tune:
            appendix += tune_markdown(args.tune)
        write_markdown(md, machine_info, commit_info, when, benchmarks, png_name, capacity,
                       appendix)
    for path in (md, png if png_written else None, merged):
        if path:
            print(f"report: wrote {path}")
    if args.summary:
        print_summary(benchmarks)
        targets = targets_markdown(benchmarks, capacity)
        if targets:
            print("\n".join(targets[4:]).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
