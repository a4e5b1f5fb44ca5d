"""The README's main job: train MemAE and the plain AE on the embedded synthetic moving-shapes
set, evaluate both, print their frame-level AUROCs per anomaly type.

  memae-fused demo            small settings, minutes on a CPU
  memae-fused demo --full     the paper's video model and scale (GPU)
  (python -m memae_fused.anomaly.demo takes the same options)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from memae_fused.anomaly.arguments import COUNT, POSITIVE_INT
from memae_fused.anomaly.data import load_dataset
from memae_fused.anomaly.evaluate import evaluate, format_results
from memae_fused.anomaly.presets import run_configs
from memae_fused.anomaly.train import (autocast, load_model, refuse_existing_run, resolve_device,
                                       train)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--full", action="store_true", help="paper scale (256x256, N = 2000); for a GPU")
    p.add_argument("--out", default="runs/demo",
                   help="results folder, one run folder per model in it (default: runs/demo)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the runs a previous demo left in --out (./dev.sh main passes it)")
    p.add_argument("--variants", default="memae,ae",
                   help="comma-separated models to compare (memae, ae, memae-nonspar)")
    p.add_argument("--epochs", type=POSITIVE_INT, help="override the preset's epochs")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                   help="autocast dtype (default none; fp16 needs a GPU)")
    p.add_argument("--device", default="auto", help="auto (default: the GPU if any), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=COUNT, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_demo(args) -> int:
    started = time.time()
    preset = "paper" if args.full else "small"
    out = Path(args.out)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    device = resolve_device(args.device)
    # What train() would refuse, refused before the synthetic set is built.
    autocast(device, args.amp)
    for variant in variants:
        refuse_existing_run(out / variant, args.overwrite)
    print(f"memae-fused demo: preset '{preset}', models {', '.join(variants)}, device {device}, "
          f"{torch.get_num_threads()} CPU threads")
    summary = {"preset": preset, "device": str(device), "models": {}}
    dataset = None
    for variant in variants:
        model_cfg, data_cfg, train_cfg = run_configs(
            preset=preset, data="synthetic", model=variant, amp=args.amp, device=args.device,
            seed=args.seed, epochs=args.epochs or None, progress=not args.no_progress)
        if dataset is None:
            dataset = load_dataset(data_cfg)
            syn = data_cfg.synthetic
            print(f"synthetic set: {len(dataset.train)} normal training videos, {len(dataset.test)} "
                  f"test videos ({', '.join(dict.fromkeys(dataset.kinds))}), "
                  f"{syn['size']}x{syn['size']} frames, {syn['frames_per_video']} frames each")
        trained = train(model_cfg, data_cfg, train_cfg, out / variant, dataset=dataset,
                        overwrite=args.overwrite)
        model, _ = load_model(trained["checkpoint"], device)
        results = evaluate(model, dataset, train_cfg.clip_len, out / variant / "eval", device=device,
                           amp=args.amp, progress=not args.no_progress,
                           extra={"model_config": model_cfg.to_dict(),
                                  "train_config": train_cfg.to_dict(),
                                  "train_seconds": trained["seconds"]})
        print(format_results(results))
        summary["models"][variant] = {k: results[k] for k in
                                      ("auc", "auc_raw_error", "auc_by_kind", "addressing")}
        summary["models"][variant]["train_seconds"] = trained["seconds"]
        summary["models"][variant]["settings"] = {"model": model_cfg.to_dict(),
                                                  "train": train_cfg.to_dict()}
    summary["synthetic"] = data_cfg.synthetic
    summary["wall_seconds"] = time.time() - started

    kinds = list(dict.fromkeys(dataset.kinds))
    print(f"\nframe-level AUROC on the synthetic set ({preset} settings; regularity score "
          "normalised per video):")
    header = f"{'model':<15}{'all':>8}" + "".join(f"{k:>17}" for k in kinds)
    print(header)
    for variant, res in summary["models"].items():
        print(f"{variant:<15}{res['auc']:>8.4f}" + "".join(f"{res['auc_by_kind'][k]:>17.4f}" for k in kinds))
    print(f"total wall time {summary['wall_seconds']:.0f} s; results, plots and checkpoints in {out}/")
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memae_fused.anomaly.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_arguments(parser)
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
