"""The `memae-fused` command: train, evaluate, check-data, one-class, demo.

  memae-fused train --data synthetic --model memae --out runs/memae
  memae-fused train --data /data/UCSDped2 --full --out runs/ped2 --amp bf16
  memae-fused train --out runs/ped2 --resume --epochs 100
  torchrun --nproc_per_node 4 -m memae_fused.anomaly.cli train --data /data/avenue --full --out runs/avenue
  memae-fused evaluate --checkpoint runs/ped2/checkpoint.pt
  memae-fused check-data --data /data/avenue
  memae-fused train --data mvtec:/data/mvtec --category bottle --model daad --out runs/bottle
  memae-fused one-class --data digits --out runs/digits
  memae-fused train --data /data/UCSDped2 --model mnad-pred --out runs/ped2-mnad
  memae-fused demo            (the README's main job; --full for the paper scale on a GPU)

Expected problems (missing folders, unreadable files, bad options, a run that would be
overwritten) end with one line "memae-fused: error: ..." and exit status 2; --debug shows
the traceback. Ctrl-C exits with status 130.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from pathlib import Path

from memae_fused.anomaly.arguments import (COUNT, NON_NEGATIVE, POSITIVE, POSITIVE_INT, THRESHOLD,
                                           ints)
from memae_fused.anomaly.data import (COLOR_CHANNELS, IMAGE_PREFIXES, ONE_CLASS_SOURCES, DataConfig, ImageDataConfig, check_images,
                                      check_videos, data_config_from_dict, detect_format,
                                      image_source_kind, load_dataset, load_image_dataset)
from memae_fused.anomaly.demo import add_demo_arguments, run_demo
from memae_fused.anomaly.evaluate import evaluate, format_results
from memae_fused.anomaly.evaluate_images import SCORE_REDUCTIONS, evaluate_images, format_image_results
from memae_fused.anomaly.evaluate_mnad import evaluate_mnad, format_mnad_results
from memae_fused.anomaly.models import (ALL_VARIANTS, DAAD_VARIANTS, MNAD_VARIANTS, MNADConfig,
                                       model_config_from_dict)
from memae_fused.anomaly.one_class import format_table, run_one_class
from memae_fused.anomaly.presets import PRESETS, image_preset, image_run_configs, run_configs
from memae_fused.anomaly.train import (AMP_DTYPES, RUNTIME_FIELDS, TrainConfig, TrainingInterrupted,
                                       load_model, read_checkpoint, resolve_device, train)
from memae_fused.backends import BACKENDS

PROG = "memae-fused"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
# Option defaults that the image branch also compares against (an option left at its
# default was not given).
CLIP_LEN = 16
ENTROPY_WEIGHT = 0.0002


class UsageError(Exception):
    """A problem with what was asked, reported in one line."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors in this command's one-line form."""

    def error(self, message):
        sys.stderr.write(f"{PROG}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_ERROR)


def _absolute(data: str) -> str:
    """A data source with its folder made absolute, so that a checkpoint's data path still
    holds when it is resumed or evaluated from another folder."""
    if data in ("synthetic", "digits", "synthetic-defects"):
        return data
    prefix, sep, path = data.partition(":")
    if not (sep and prefix in IMAGE_PREFIXES):
        prefix, sep, path = "", "", data
    if not path:
        raise UsageError(f"--data: {data!r} names no folder (write {prefix}:PATH)")
    return f"{prefix}{sep}{Path(path).expanduser().resolve()}"


def _square(size):
    return None if size is None else (size[0], size[0]) if len(size) == 1 else tuple(size)


def add_data_arguments(p: argparse.ArgumentParser, size_help: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic", metavar="PATH",
                   help="video: 'synthetic' (the embedded moving-shapes set; the default) or a "
                        "data folder: UCSD Ped1/Ped2 (Train/Train001/001.tif ..., Test/), frames "
                        "folders (training/frames/01/0000.jpg ..., testing/frames/: Avenue, "
                        "ShanghaiTech) or video files (training/videos/01.avi ... or Avenue's "
                        "training_videos/ and testing_videos/). Images: 'digits' (scikit-learn's "
                        "handwritten digits, one class normal), 'synthetic-defects' (an embedded "
                        "MVTec-like set), 'mvtec:PATH' (a category folder, or the MVTec root with "
                        "--category), 'folder:PATH' (anomalib's Folder layout: PATH/normal, "
                        "PATH/abnormal, PATH/normal_test, optional masks), 'mnist:PATH', "
                        "'cifar10:PATH'")
    g.add_argument("--data-format", default="auto", choices=("auto", "ucsd", "frames"),
                   help="layout of --data: 'ucsd' (Train/, Test/), 'frames' (training/ and "
                        "testing/ holding frames/ or videos/, or training_videos/ and "
                        "testing_videos/); default 'auto' tells them apart by those folders")
    g.add_argument("--labels", metavar="FILE",
                   help="frame labels of the test videos for the frames layout: a "
                        "frame_labels_<name>.npy of 0/1 per test frame, all test videos in "
                        "sorted order (default: the one frame_labels_*.npy in --data; UCSD "
                        "takes its labels from Test/Test###_gt/ and UCSDped*.m)")
    g.add_argument("--size", type=ints, metavar="HxW", help=size_help)


def add_color_argument(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("colour (video frames and images)")
    g.add_argument("--color", choices=("gray", "rgb"),
                   help="channels the frames or images are read with (default: gray for videos, "
                        "digits and MNIST, rgb for the other image sets; the synthetic video set "
                        "is gray only)")


def add_image_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image data (--data digits, synthetic-defects, mvtec:, folder:, mnist:, cifar10:)")
    g.add_argument("--normal-class", type=COUNT, metavar="K",
                   help="the normal class of a one-class set (digits, mnist, cifar10: 0-9)")
    g.add_argument("--category", help="MVTec-AD category (with --data mvtec:ROOT)")
    g.add_argument("--flips", action="store_true",
                   help="random horizontal and vertical flips of the training images (DAAD's)")
    g.add_argument("--normal-dir", default="normal", help="folder: the normal training images' folder")
    g.add_argument("--abnormal-dir", default="abnormal", help="folder: the anomalous test images' folder")
    g.add_argument("--normal-test-dir", default="normal_test",
                   help="folder: the normal test images' folder")
    g.add_argument("--mask-dir", help="folder: masks of the anomalous images (same stems, or stem_mask)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train MemAE (or an ablation) on normal videos",
                       description="Train on the training videos of --data (test videos and "
                                   "labels are not needed) and write OUT/checkpoint.pt after "
                                   "every epoch and OUT/train_log.jsonl. Every option left out "
                                   "takes the preset's value.")
    add_data_arguments(t, "frame size HxW, or one number for square frames (default: 64 with "
                          "--preset small, 256 with paper; images: the data kind's preset)")
    add_color_argument(t)
    add_image_arguments(t)
    t.add_argument("--preset", default="small", choices=tuple(PRESETS),
                   help="'small' (default: minutes on a CPU) or 'paper' (the paper's video "
                        "model: widths 96-128-256-256, N = 2000, 256x256, lr 1e-4, batch 12, "
                        "60 epochs; for a GPU)")
    t.add_argument("--full", action="store_const", dest="preset", const="paper",
                   help="the same as --preset paper")
    m = t.add_argument_group("model")
    m.add_argument("--model", default="memae", choices=ALL_VARIANTS,
                   help="memae (default), ae (no memory), memae-nonspar (no shrinkage, no "
                        "entropy loss), daad (images: a U-Net with a block memory per scale), "
                        "mnad-pred or mnad-recon (video: MNAD's future-frame prediction from 4 "
                        "frames, or single-frame reconstruction)")
    m.add_argument("--no-memory", action="store_true",
                   help="mnad-*: drop the memory (the decoder sees the query alone)")
    m.add_argument("--usage-weight", type=NON_NEGATIVE, default=0.0,
                   help="mnad-*: weight of a term balancing the items' usage against their "
                        "collapse onto one item (default 0: off, as in MNAD)")
    m.add_argument("--channels", type=ints, metavar="C1,C2,...",
                   help="encoder widths, e.g. 96,128,256,256 (their count is the depth; mnad-*: "
                        "three stage widths and the memory's dim, e.g. 64,128,256,512)")
    m.add_argument("--decoder-channels", type=ints, metavar="C1,C2,...",
                   help="widths of every decoder stage but the last (default: the encoder's, "
                        "mirrored)")
    m.add_argument("--num-slots", type=POSITIVE_INT, metavar="N", help="memory size N (mnad-*: items)")
    m.add_argument("--shrink-thres", type=THRESHOLD, metavar="LAMBDA",
                   help="hard-shrinkage threshold lambda (default 1/N)")
    m.add_argument("--similarity", choices=("cosine", "dot"),
                   help="addressing similarity (default cosine, as in the papers)")
    m.add_argument("--temperature", type=POSITIVE,
                   help="softmax temperature of the addressing (default 0.05; daad: 1)")
    m.add_argument("--division", type=ints, metavar="RC,RH,RW",
                   help="daad: blocks per scale along channels, rows, columns (default 1,8,8 at "
                        "256x256, 1,4,4 for small images; capped where a scale is smaller)")
    m.add_argument("--entropy-weight", type=NON_NEGATIVE, default=ENTROPY_WEIGHT, metavar="ALPHA",
                   help=f"weight of the addressing entropy in the loss (default {ENTROPY_WEIGHT})")
    m.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                   help="memory-read kernel: auto (default: triton, then cuda on a GPU; cpp "
                        "on the CPU; reference where none is available), cpp (the compiled CPU "
                        "op), cuda (the compiled CUDA op), triton, reference (plain PyTorch)")
    o = t.add_argument_group("training")
    o.add_argument("--epochs", type=POSITIVE_INT, help="total epochs (a resumed run continues up to it)")
    o.add_argument("--batch-size", type=POSITIVE_INT, help="clips per batch per process")
    o.add_argument("--lr", type=POSITIVE, help="Adam learning rate")
    o.add_argument("--clip-len", type=POSITIVE_INT, default=CLIP_LEN, help=f"frames per clip (default {CLIP_LEN})")
    o.add_argument("--clip-stride", type=POSITIVE_INT, help="frames between the starts of training clips")
    o.add_argument("--amp", default="none", choices=tuple(AMP_DTYPES),
                   help="autocast dtype (default none: float32; fp16 needs a GPU)")
    o.add_argument("--workers", type=COUNT, default=0, help="DataLoader workers (default 0)")
    o.add_argument("--seed", type=COUNT, default=0, help="random seed (default 0)")
    o.add_argument("--device", default="auto", help="auto (default: the GPU if any), cpu, cuda, cuda:N")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    r = t.add_argument_group("run folder")
    r.add_argument("--out", required=True, metavar="DIR",
                   help="run folder (checkpoint.pt, train_log.jsonl); one that holds a run "
                        "already is refused without --resume or --overwrite")
    r.add_argument("--resume", action="store_true",
                   help="continue OUT/checkpoint.pt with its own settings; of the options, only "
                        "--epochs, --workers, --device and --no-progress may differ from them")
    r.add_argument("--overwrite", action="store_true",
                   help="start a new run in an OUT that holds one, replacing its checkpoint and log")
    _common(t)

    e = sub.add_parser("evaluate", help="score test frames, AUROC, plots",
                       description="Score every test frame (or image) of the checkpoint's data "
                                   "set (or of --data) and write results.json, scores.npz and "
                                   "plots: MemAE regularity.png, roc.png and examples.png; MNAD "
                                   "roc.png; images roc.png and overlays.png.")
    e.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="checkpoint.pt written by memae-fused train")
    add_data_arguments(e, "frame size HxW or one number (default: the checkpoint's)")
    e.set_defaults(data=None)
    e.add_argument("--out", metavar="DIR", help="results folder (default: the checkpoint's folder/eval)")
    e.add_argument("--batch-size", type=POSITIVE_INT, default=16, help="clips per batch (default 16)")
    e.add_argument("--amp", default="none", choices=tuple(AMP_DTYPES),
                   help="autocast dtype (default none; fp16 needs a GPU)")
    e.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    e.add_argument("--image-score", choices=SCORE_REDUCTIONS,
                   help="images: an image's score is the max or the mean of its anomaly map "
                        "(default: mean for one-class sets, as the MemAE paper; max otherwise, "
                        "as anomalib)")
    e.add_argument("--category", help="images: another MVTec-AD category (with --data mvtec:ROOT)")
    e.add_argument("--no-test-time-update", action="store_true",
                   help="mnad-*: score without MNAD's test-time memory update")
    e.add_argument("--no-plots", action="store_true", help="write no plots")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    _common(e)

    c = sub.add_parser("check-data", help="check that every file of a data set can be read",
                       description="Load --data as train and evaluate would, open every frame "
                                   "file's header and every video file's first frame, and "
                                   "list every problem at once.")
    add_data_arguments(c, "frame size HxW or one number (default: 64; images: the preset's)")
    add_color_argument(c)
    add_image_arguments(c)
    _common(c)

    b = sub.add_parser("one-class", help="the one-class benchmark: every class normal in turn",
                       description="Train and evaluate every model with every class of a "
                                   "labelled image set normal in turn (the others anomalous), "
                                   "and write OUT/table.md and OUT/results.json: image AUROC per "
                                   "class and model, and its mean.")
    b.add_argument("--data", default="digits", metavar="SOURCE",
                   help="digits (default: scikit-learn's bundled digits), mnist:PATH or cifar10:PATH")
    b.add_argument("--models", default="ae,memae-nonspar,memae,daad",
                   help="comma-separated models (default ae,memae-nonspar,memae,daad)")
    b.add_argument("--classes", default="0-9", help="normal classes, e.g. 0-9 or 1,3,7 (default 0-9)")
    b.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2 (default 0)")
    b.add_argument("--epochs", type=POSITIVE_INT, help="epochs per run (default: the preset's)")
    b.add_argument("--image-score", choices=SCORE_REDUCTIONS,
                   help="max or mean of the anomaly map (default: mean, the paper's reconstruction error)")
    b.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    b.add_argument("--out", required=True, metavar="DIR", help="results folder, one run folder per model, seed and class")
    b.add_argument("--overwrite", action="store_true", help="replace runs a previous benchmark left in OUT")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    _common(b)

    d = sub.add_parser("demo", help="train MemAE and the plain AE on the synthetic set, evaluate, print AUCs",
                       description="The README's main job: train MemAE and the plain AE on the "
                                   "synthetic set, evaluate both and print their AUROCs.")
    add_demo_arguments(d)
    _common(d)
    return parser


IMAGE_ONLY_OPTIONS = ("normal_class", "category", "flips", "division", "mask_dir")


def configs_from_args(args):
    """(model config, data config, TrainConfig) from train arguments: preset defaults, then
    the options given. Image sources give an ImageDataConfig."""
    data = _absolute(args.data)
    common = {name: getattr(args, name) for name in (
        "size", "model", "channels", "decoder_channels", "num_slots", "shrink_thres",
        "similarity", "temperature", "entropy_weight", "backend", "epochs", "batch_size", "lr",
        "amp", "workers", "seed", "device")}
    if image_source_kind(data) is not None:
        ignored = [option for option, given in (
            ("--preset / --full", args.preset != "small"), ("--data-format", args.data_format != "auto"),
            ("--labels", args.labels is not None), ("--clip-len", args.clip_len != CLIP_LEN),
            ("--clip-stride", args.clip_stride is not None), ("--no-memory", args.no_memory),
            ("--decoder-channels", args.model == "daad" and args.decoder_channels is not None),
            ("--entropy-weight", args.model == "daad" and args.entropy_weight != ENTROPY_WEIGHT),
            ("--division", args.model != "daad" and args.division is not None)) if given]
        if ignored or args.model in MNAD_VARIANTS:
            raise UsageError(f"{ignored[0] if ignored else '--model ' + args.model} does not apply "
                             f"to {'--model ' + args.model if ignored else 'image data'} on {args.data}")
        return image_run_configs(data=data, **common, progress=not args.no_progress,
                                 **{name: getattr(args, name) for name in (
                                     *IMAGE_ONLY_OPTIONS, "color", "normal_dir", "abnormal_dir",
                                     "normal_test_dir")})
    misplaced = [name for name in IMAGE_ONLY_OPTIONS if getattr(args, name, None)]
    if misplaced or args.model in DAAD_VARIANTS:
        option = f"--{misplaced[0].replace('_', '-')}" if misplaced else "--model daad"
        raise UsageError(f"{option} applies to image data (--data digits, synthetic-defects, "
                         f"mvtec:PATH, folder:PATH, mnist:PATH, cifar10:PATH), not to {args.data}")
    common.update(similarity=args.similarity or "cosine",
                  temperature=0.05 if args.temperature is None else args.temperature)
    return run_configs(preset=args.preset, data=data, data_format=args.data_format,
                       labels=args.labels, clip_len=args.clip_len, clip_stride=args.clip_stride,
                       use_memory=not args.no_memory, usage_weight=args.usage_weight, **common,
                       progress=not args.no_progress, color=args.color or "gray")


# Which config field each train option sets: (config, field).
OPTION_FIELDS = {
    "data": ("data", "source"), "data_format": ("data", "format"), "labels": ("data", "labels"),
    "size": ("data", "size"), "model": ("model", "variant"), "channels": ("model", "channels"),
    "decoder_channels": ("model", "decoder_channels"), "num_slots": ("model", "num_slots"),
    "shrink_thres": ("model", "shrink_thres"), "similarity": ("model", "similarity"),
    "temperature": ("model", "temperature"), "entropy_weight": ("model", "entropy_weight"),
    "backend": ("model", "backend"), "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"), "clip_len": ("train", "clip_len"),
    "clip_stride": ("train", "clip_stride"), "amp": ("train", "amp"), "seed": ("train", "seed"),
    "normal_class": ("data", "normal_class"), "category": ("data", "category"),
    "color": ("data", "channels"), "flips": ("data", "flips"), "normal_dir": ("data", "normal_dir"),
    "abnormal_dir": ("data", "abnormal_dir"), "normal_test_dir": ("data", "normal_test_dir"),
    "mask_dir": ("data", "mask_dir"), "division": ("model", "division"),
    "no_memory": ("model", "use_memory"), "usage_weight": ("model", "usage_weight"),
}
# The fields a preset sets.
PRESET_FIELDS = (("data", "size"), ("data", "synthetic"), ("model", "channels"),
                 ("model", "decoder_channels"), ("model", "num_slots"), ("train", "batch_size"),
                 ("train", "lr"), ("train", "clip_stride"))
RESUMABLE_OPTIONS = ("epochs", "workers", "device", "no_progress")
assert {"epochs", "num_workers", "device", "progress"} == set(RUNTIME_FIELDS)


def given_options(parser: argparse.ArgumentParser, argv) -> set:
    """The destinations of the train options present on the command line."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train_parser = sub.choices["train"]
    saved = [(a, a.default) for a in train_parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        present = vars(train_parser.parse_known_args(argv[1:])[0])
    finally:
        for action, default in saved:
            action.default = default
    return set(present)


def _same(field, saved, given) -> bool:
    if field == "source" and "synthetic" not in (saved, given):
        return Path(saved).resolve() == Path(given).resolve()
    if isinstance(saved, (list, tuple)) and isinstance(given, (list, tuple)):
        return list(saved) == list(given)
    return saved == given


def resume_conflicts(ckpt: dict, args, given: set) -> list:
    """'--option: checkpoint X, given Y' for every option on the command line that would
    change a setting of the checkpoint's run."""
    new = dict(zip(("model", "data", "train"), configs_from_args(args)))
    saved = {"model": ckpt["model_config"], "data": ckpt["data_config"],
             "train": ckpt["train_config"]}
    checks = [(f"--{name.replace('_', '-')}", OPTION_FIELDS[name]) for name in sorted(given)
              if name in OPTION_FIELDS]
    if "preset" in given:
        option = f"--preset {args.preset}"  # --full included
        checks += [(f"{option} ({field})", (cfg, field)) for cfg, field in PRESET_FIELDS
                   if not any(f == field for _, (_, f) in checks)
                   # the preset's synthetic set matters only to a run on it
                   and (field != "synthetic" or ckpt["data_config"]["source"] == "synthetic")]
    conflicts = []
    for option, (cfg, field) in checks:
        before, after = saved[cfg].get(field), getattr(new[cfg], field, None)
        if not _same(field, before, after):
            if option == "--color":  # stored as a channel count, given as a word
                before, after = COLORS.get(before, before), COLORS.get(after, after)
            conflicts.append(f"{option}: checkpoint {before!r}, given {after!r}")
    return conflicts


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def cmd_train(args, argv) -> int:
    ckpt_path = Path(args.out) / "checkpoint.pt"
    if args.resume:
        if not ckpt_path.is_file():
            raise UsageError(f"--resume: no checkpoint at {ckpt_path} (is --out right?)")
        if args.overwrite:
            raise UsageError("--resume and --overwrite: pick one")
        ckpt = read_checkpoint(ckpt_path)
        given = given_options(build_parser(), argv)
        # Options left out take the run's values, so that the configs built from the options
        # given (to compare with the checkpoint's) are of the run's kind.
        for name, config, field in (("data", "data_config", "source"),
                                    ("normal_class", "data_config", "normal_class"),
                                    ("category", "data_config", "category"),
                                    ("model", "model_config", "variant")):
            if name not in given:
                setattr(args, name, ckpt[config].get(field))
        conflicts = resume_conflicts(ckpt, args, given)
        if conflicts:
            raise UsageError(
                f"--resume: these options differ from {ckpt_path}'s run: " + "; ".join(conflicts)
                + " (only --epochs, --workers, --device and --no-progress may change; start a "
                  "new --out to train with other settings)")
        # The run's own settings, so that a resume needs only --out (and maybe --epochs).
        model_cfg = model_config_from_dict(ckpt["model_config"])
        data_cfg = data_config_from_dict(ckpt["data_config"])
        train_cfg = TrainConfig.from_dict({
            **ckpt["train_config"], "num_workers": args.workers, "device": args.device,
            "progress": not args.no_progress,
            "epochs": args.epochs or ckpt["train_config"]["epochs"]})
    else:
        model_cfg, data_cfg, train_cfg = configs_from_args(args)
    try:
        summary = train(model_cfg, data_cfg, train_cfg, args.out, resume=args.resume,
                        overwrite=args.overwrite,
                        log=print if _is_main_process() else (lambda *a: None))
    except TrainingInterrupted as stop:
        if _is_main_process():
            if stop.checkpoint is None:
                print("\ninterrupted before the first epoch ended; nothing saved", file=sys.stderr)
            else:
                print(f"\ninterrupted after epoch {stop.epoch}; resume with: {PROG} train --out "
                      f"{args.out} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if _is_main_process():
        if summary["last_epoch"] is None:
            print(f"nothing to do: {summary['checkpoint']} has {summary['start_epoch']} epochs "
                  f"already (--epochs {train_cfg.epochs})")
        else:
            print(f"checkpoint: {summary['checkpoint']}")
    return 0


def _data_config(args, defaults: DataConfig) -> DataConfig:
    """The checkpoint's data settings with evaluate's --data (and its layout options) and
    --size applied; frames are read with the channels the model was trained on."""
    size = _square(args.size) or tuple(defaults.size)
    if args.data is None:
        fields = dict(defaults.to_dict(), size=size)
    else:
        fields = dict(source=args.data, format=args.data_format, labels=args.labels, size=size,
                      synthetic=None, channels=defaults.channels)
    if fields["source"] == "synthetic":
        fields["synthetic"] = dict(defaults.synthetic or {}, size=size[0])
    return DataConfig(**fields)


def _print_results(text: str, out: Path, auc: float = 0.0, undefined_because: str = "",
                   metric: str = "AUROC") -> int:
    """evaluate's report: the results, a warning when the AUROC is undefined (NaN), where
    results.json is."""
    print(text)
    if auc != auc:
        print(f"warning: the {metric} is undefined: {undefined_because}", file=sys.stderr)
    print(f"results: {out / 'results.json'}")
    return 0


def cmd_evaluate_images(args, model, ckpt, device) -> int:
    for option, given in (("--size", args.size is not None), ("--data-format", args.data_format != "auto"),
                          ("--labels", args.labels is not None)):
        if given:
            raise UsageError(f"{option} does not apply to an image checkpoint (its images keep "
                             "the size it was trained at)")
    data_cfg = ImageDataConfig.from_dict(ckpt["data_config"])
    if args.data is not None or args.category is not None:
        data_cfg = ImageDataConfig.from_dict({
            **data_cfg.to_dict(), "source": _absolute(args.data) if args.data else data_cfg.source,
            "category": args.category or data_cfg.category})
    dataset = load_image_dataset(data_cfg)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    score = args.image_score or image_preset(data_cfg.source_kind)["score"]
    with _removed_if_failed(out):
        results = evaluate_images(model, dataset, out, device=device, batch_size=args.batch_size,
                                  amp=args.amp, score=score, plots=not args.no_plots,
                                  extra={"checkpoint": str(args.checkpoint),
                                         "trained_epochs": ckpt["epoch"]})
    return _print_results(format_image_results(results), out, results["image_auroc"],
                          f"the test images of {dataset.name} hold only one class", "image AUROC")


def cmd_evaluate(args) -> int:
    device = resolve_device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    if ckpt["data_config"].get("kind") == "image":
        return cmd_evaluate_images(args, model, ckpt, device)
    if args.image_score or args.category:
        raise UsageError("--image-score and --category apply to image checkpoints")
    trained = DataConfig.from_dict(ckpt["data_config"])
    data_cfg = _data_config(args, trained)
    if tuple(data_cfg.size) != tuple(trained.size):
        print(f"note: evaluating at {_size_text(data_cfg.size)}; the model was trained at "
              f"{_size_text(trained.size)}")
    dataset = load_dataset(data_cfg)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval"
    extra = {"checkpoint": str(args.checkpoint), "trained_epochs": ckpt["epoch"],
             "frame_size": list(data_cfg.size), "color": COLORS[data_cfg.channels]}
    with _removed_if_failed(out):
        if isinstance(model.config, MNADConfig):
            results = evaluate_mnad(model, dataset, out, device=device, amp=args.amp,
                                    plots=not args.no_plots,
                                    test_time_update=not args.no_test_time_update, extra=extra)
            return _print_results(format_mnad_results(results), out)
        results = evaluate(model, dataset, ckpt["train_config"]["clip_len"], out, device=device,
                           batch_size=args.batch_size, amp=args.amp, plots=not args.no_plots,
                           progress=not args.no_progress, extra=extra)
    return _print_results(format_results(results), out, results["auc"],
                          f"the scored test frames of {dataset.name} hold only one class (all "
                          "normal or all anomalous)")


COLORS = {channels: word for word, channels in COLOR_CHANNELS.items()}


def _size_text(size) -> str:
    return f"{size[0]} x {size[1]}"


@contextlib.contextmanager
def _removed_if_failed(out: Path):
    """An evaluation's folder, removed again if the evaluation fails before writing to it
    (a folder that existed before, or holds files, is left alone)."""
    existed = out.exists()
    try:
        yield
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _frame_count(videos, problems) -> int:
    """Frames of the videos no problem names (a broken video file cannot be counted)."""
    broken = " ".join(problems)
    return sum(len(v) for v in videos if str(getattr(v, "path", "\0")) not in broken)


def _report(problems, data: str, all_good: str) -> int:
    """check-data's end: every problem on a line of its own, then one error line."""
    for problem in problems:
        print(f"  {problem}")
    if problems:
        raise UsageError(f"{len(problems)} problem(s) in {data}, listed above")
    print(all_good)
    return 0


def cmd_check_image_data(args) -> int:
    _, data_cfg, _ = image_run_configs(
        data=_absolute(args.data), size=args.size,
        **{name: getattr(args, name) for name in (*IMAGE_ONLY_OPTIONS, "color", "normal_dir",
                                                  "abnormal_dir", "normal_test_dir")
           if name != "division"})
    dataset = load_image_dataset(data_cfg)
    problems = check_images(dataset.train) + check_images(dataset.test)
    masks = "no masks" if dataset.masks is None else "masks for every anomalous image"
    print(f"{args.data}: {len(dataset.train)} training images, {len(dataset.test)} test images "
          f"({int(dataset.labels.sum())} anomalous; {masks})")
    return _report(problems, args.data, "every file could be read")


def _int_list(text: str, option: str):
    values = []
    for part in text.split(","):
        first, dash, last = part.partition("-")
        try:
            values += list(range(int(first), int(last) + 1)) if dash else [int(first)]
        except ValueError:
            raise UsageError(f"{option}: expected numbers like 0-9 or 1,3,7, got {text!r}") from None
    return values


def cmd_one_class(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in ALL_VARIANTS]
    if unknown or not models:
        raise UsageError(f"--models: {', '.join(unknown) or 'none given'}; choose from {', '.join(ALL_VARIANTS)}")
    data = _absolute(args.data)
    if image_source_kind(data) not in ONE_CLASS_SOURCES:
        raise UsageError(f"--data: {args.data} is no one-class set (digits, mnist:PATH, cifar10:PATH)")
    summary = run_one_class(data, models, _int_list(args.classes, "--classes"),
                            _int_list(args.seeds, "--seeds"), args.out, epochs=args.epochs,
                            score=args.image_score, device=args.device, overwrite=args.overwrite,
                            progress=not args.no_progress)
    print(format_table(summary))
    print(f"table: {Path(args.out) / 'table.md'}; results: {Path(args.out) / 'results.json'}")
    return 0


def cmd_check_data(args) -> int:
    if image_source_kind(_absolute(args.data)) is not None:
        return cmd_check_image_data(args)
    data_cfg = DataConfig(source=_absolute(args.data), format=args.data_format, labels=args.labels,
                          size=_square(args.size) or PRESETS["small"]["size"],
                          channels=COLOR_CHANNELS[args.color or "gray"])
    train_set = load_dataset(data_cfg, test=False)
    layout = "synthetic" if args.data == "synthetic" else (
        detect_format(Path(args.data)) if args.data_format == "auto" else args.data_format)
    problems = check_videos(train_set.train, decode=True)
    print(f"{args.data} ({layout} layout, read as {_size_text(data_cfg.size)} "
          f"{COLORS[data_cfg.channels]}): {len(train_set.train)} training videos, "
          f"{_frame_count(train_set.train, problems)} readable frames")
    # Training goes on without test videos or labels, so their problems are listed apart.
    try:
        full = load_dataset(data_cfg)
        anomalous = sum(int(lab.sum()) for lab in full.labels)
        labelled = f"{anomalous} labelled anomalous"
        total = sum(len(lab) for lab in full.labels)
        if anomalous in (0, total):
            problems.append(f"labels: {'no' if anomalous == 0 else 'every'} test frame is labelled "
                            "anomalous, so AUROC is undefined")
    except (OSError, ValueError) as exc:
        problems.append(f"test set (needed by evaluate, not by train): {exc}")
        try:
            full, labelled = load_dataset(data_cfg, with_labels=False), "no labels"
        except (OSError, ValueError):
            full = None
    if full is not None:
        test_problems = check_videos(full.test, decode=True)
        print(f"test set: {len(full.test)} videos, {_frame_count(full.test, test_problems)} "
              f"readable frames, {labelled}")
        problems += test_problems
    return _report(problems, args.data, "every file could be decoded")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args, argv)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "check-data":
            return cmd_check_data(args)
        if args.command == "one-class":
            return cmd_one_class(args)
        return run_demo(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, OSError, ValueError) as exc:
        # The expected failures: bad paths, unreadable files, bad settings. Anything else is
        # a bug and keeps its traceback.
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
