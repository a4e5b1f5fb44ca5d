"""The `memae-fused` command: train, evaluate, demo.

  memae-fused train --data synthetic --model memae --out runs/memae
  memae-fused train --data /data/UCSDped2 --preset paper --out runs/ped2 --amp bf16
  torchrun --nproc_per_node 4 -m memae_fused.anomaly.cli train --data /data/avenue --preset paper --out runs/avenue
  memae-fused evaluate --checkpoint runs/memae/checkpoint.pt
  memae-fused demo            (the README's main job; --full for the paper scale on a GPU)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memae_fused.anomaly.data import DataConfig, load_dataset
from memae_fused.anomaly.demo import add_demo_arguments, run_demo
from memae_fused.anomaly.evaluate import evaluate, format_results
from memae_fused.anomaly.models import VARIANTS, ModelConfig
from memae_fused.anomaly.presets import PRESETS, run_configs
from memae_fused.anomaly.train import (AMP_DTYPES, TrainConfig, load_model, read_checkpoint,
                                       resolve_device, train)

def _ints(text: str):
    return tuple(int(t) for t in text.replace("x", ",").split(",") if t)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic",
                   help="'synthetic' (the embedded moving-shapes set) or a data folder: UCSD "
                        "Ped1/Ped2 (Train/, Test/) or frames-folder layout (training/, testing/)")
    g.add_argument("--data-format", default="auto", choices=("auto", "ucsd", "frames"))
    g.add_argument("--labels", help="frame_labels_<name>.npy (frames layout; default: the one in the data folder)")
    g.add_argument("--size", type=_ints, help="frame size HxW or one number (preset default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memae-fused", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train MemAE (or an ablation) on normal videos")
    add_data_arguments(t)
    t.add_argument("--preset", default="small", choices=tuple(PRESETS))
    m = t.add_argument_group("model")
    m.add_argument("--model", default="memae", choices=VARIANTS)
    m.add_argument("--channels", type=_ints, help="encoder widths, e.g. 96,128,256,256 (depth = count)")
    m.add_argument("--decoder-channels", type=_ints)
    m.add_argument("--num-slots", type=int, help="memory size N")
    m.add_argument("--shrink-thres", type=float, help="lambda (default 1/N)")
    m.add_argument("--similarity", default="cosine", choices=("cosine", "dot"))
    m.add_argument("--temperature", type=float, default=0.05)
    m.add_argument("--entropy-weight", type=float, default=0.0002, help="alpha")
    m.add_argument("--backend", default="auto", help="memory backend (see memae_fused.memory_read)")
    o = t.add_argument_group("training")
    o.add_argument("--epochs", type=int)
    o.add_argument("--batch-size", type=int)
    o.add_argument("--lr", type=float)
    o.add_argument("--clip-len", type=int, default=16)
    o.add_argument("--clip-stride", type=int)
    o.add_argument("--amp", default="none", choices=tuple(AMP_DTYPES))
    o.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--device", default="auto")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--out", required=True, help="run folder (checkpoint.pt, train_log.jsonl)")
    o.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt with its settings (only --epochs, "
                        "--workers, --device and progress may change)")

    e = sub.add_parser("evaluate", help="score test frames, AUROC, plots")
    e.add_argument("--checkpoint", required=True)
    add_data_arguments(e)
    e.set_defaults(data=None)
    e.add_argument("--out", help="results folder (default: CHECKPOINT's folder/eval)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--amp", default="none", choices=tuple(AMP_DTYPES))
    e.add_argument("--device", default="auto")
    e.add_argument("--no-plots", action="store_true")
    e.add_argument("--no-progress", action="store_true")

    d = sub.add_parser("demo", help="train MemAE and the plain AE on the synthetic set, evaluate, print AUCs")
    add_demo_arguments(d)
    return parser


def configs_from_args(args):
    """(ModelConfig, DataConfig, TrainConfig) from train arguments: preset defaults, then the
    options given."""
    options = {name: getattr(args, name) for name in (
        "preset", "data", "data_format", "labels", "size", "model", "channels",
        "decoder_channels", "num_slots", "shrink_thres", "similarity", "temperature",
        "entropy_weight", "backend", "epochs", "batch_size", "lr", "clip_len", "clip_stride",
        "amp", "workers", "seed", "device")}
    try:
        return run_configs(**options, progress=not args.no_progress)
    except ValueError as exc:
        raise SystemExit(f"memae-fused: error: {exc}") from None


def cmd_train(args) -> int:
    ckpt_path = Path(args.out) / "checkpoint.pt"
    if args.resume and ckpt_path.is_file():
        # The run's own settings, so that a resume needs only --out (and maybe --epochs).
        ckpt = read_checkpoint(ckpt_path)
        model_cfg = ModelConfig.from_dict(ckpt["model_config"])
        data_cfg = DataConfig.from_dict(ckpt["data_config"])
        train_cfg = TrainConfig.from_dict({
            **ckpt["train_config"], "num_workers": args.workers, "device": args.device,
            "progress": not args.no_progress,
            "epochs": args.epochs or ckpt["train_config"]["epochs"]})
    else:
        model_cfg, data_cfg, train_cfg = configs_from_args(args)
    summary = train(model_cfg, data_cfg, train_cfg, args.out, resume=args.resume)
    if summary["last_epoch"] is None:
        print(f"nothing to do: {summary['checkpoint']} already has {train_cfg.epochs} epochs")
    else:
        print(f"checkpoint: {summary['checkpoint']}")
    return 0


def cmd_evaluate(args) -> int:
    device = resolve_device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    data_cfg = DataConfig.from_dict(ckpt["data_config"])
    if args.data is not None:
        size = args.size or data_cfg.size
        size = (size[0], size[0]) if len(size) == 1 else tuple(size)
        data_cfg = DataConfig(source=args.data, format=args.data_format, labels=args.labels,
                              size=size, synthetic=data_cfg.synthetic if args.data == "synthetic" else None)
    dataset = load_dataset(data_cfg)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    results = evaluate(model, dataset, ckpt["train_config"]["clip_len"], out, device=device,
                       batch_size=args.batch_size, amp=args.amp, plots=not args.no_plots,
                       progress=not args.no_progress,
                       extra={"checkpoint": str(args.checkpoint), "trained_epochs": ckpt["epoch"]})
    print(format_results(results))
    print(f"results: {out / 'results.json'}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return cmd_train(args)
    if args.command == "evaluate":
        return cmd_evaluate(args)
    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
