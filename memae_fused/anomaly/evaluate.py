"""Evaluation as in the paper: the reconstruction error of the clip centred on each frame,
a per-video regularity score p = 1 - (e - min e) / (max e - min e), and frame-level AUROC
over all test videos (and per anomaly type where the data set names them).

Each clip's error is the mean over pixels of the per-pixel L2 norm over channels of
(input - reconstruction) on frames in [-1, 1] (the released code's measure); it is assigned
to frame start + clip_len // 2. Frames no clip is centred on (the first clip_len // 2 and the
last clip_len - 1 - clip_len // 2 of each video) get no score and are left out of the AUC.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from memae_fused.anomaly.data import ClipDataset, VideoDataset, frames_to_tensor
from memae_fused.anomaly.metrics import auroc, roc_curve
from memae_fused.anomaly.models import MemAE
from memae_fused.anomaly.train import autocast, memory_backend


# ----------------------------------------------------------------------------- scores


def min_max(values: np.ndarray) -> np.ndarray:
    """(v - min v) / (max v - min v) over the scored (non-NaN) entries; 0 everywhere when all
    are equal; NaN stays NaN."""
    scored = values[~np.isnan(values)]
    if scored.size == 0:
        return values.copy()
    low, span = scored.min(), scored.max() - scored.min()
    return (values - low) / span if span > 0 else np.where(np.isnan(values), np.nan, 0.0)


def regularity(errors: np.ndarray) -> np.ndarray:
    """p = 1 - (e - min e) / (max e - min e) over the scored (non-NaN) frames; 1 everywhere
    when all errors are equal."""
    return 1.0 - min_max(errors)


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def video_errors(model: MemAE, frames: np.ndarray, clip_len: int, batch_size: int,
                 device, amp: str = "none") -> np.ndarray:
    """Per-frame error (NaN where no clip is centred) of one video's uint8 frames, (T, H, W)
    or RGB (T, H, W, 3)."""
    errors = np.full(len(frames), np.nan)
    video = frames_to_tensor(frames)  # (C, T, H, W)
    starts = list(range(len(frames) - clip_len + 1))
    for i in range(0, len(starts), batch_size):
        batch = starts[i:i + batch_size]
        x = torch.stack([video[:, s:s + clip_len] for s in batch]).to(device)
        with autocast(device, amp):
            recon = model(x).recon
        err = (recon.float() - x).pow(2).sum(dim=1).sqrt().flatten(1).mean(dim=1)
        errors[np.asarray(batch) + clip_len // 2] = err.cpu().numpy()
    return errors


@torch.no_grad()
def addressing_stats(model: MemAE, clips: torch.Tensor) -> Optional[Dict[str, float]]:
    """How the memory is addressed on a batch of clips: non-zero weights per query, the
    fraction of all-zero rows (queries reading nothing), slots any query uses, and the
    effective number of slots (exp of the entropy of the summed weights). None without memory."""
    if model.memory is None:
        return None
    att = model(clips, return_att=True).att.float()
    weights = att.movedim(1, -1).reshape(-1, att.shape[1])
    nonzero = (weights > 0).sum(dim=1).double()
    used = weights.sum(dim=0)
    share = used[used > 0] / used.sum() if used.sum() > 0 else used[:0]
    return {
        "queries": weights.shape[0],
        "num_slots": weights.shape[1],
        "nonzero_per_query_mean": nonzero.mean().item(),
        "nonzero_per_query_max": int(nonzero.max().item()),
        "empty_row_fraction": (nonzero == 0).double().mean().item(),
        "max_weight_mean": weights.max(dim=1).values.double().mean().item(),
        "slots_used": int((used > 0).sum().item()),
        "slots_used_fraction": (used > 0).double().mean().item(),
        "effective_slots": float(torch.exp(-(share * share.log()).sum()).item()) if share.numel() else 0.0,
    }


def pooled(values: List[np.ndarray], labels: List[np.ndarray], indices):
    scores = np.concatenate([values[i] for i in indices])
    truth = np.concatenate([labels[i] for i in indices])
    keep = ~np.isnan(scores)
    return scores[keep], truth[keep]


def prepare_evaluation(model, out_dir, device):
    """(model in eval mode on the device, results folder (created), device, memory backend)."""
    out_dir, device = Path(out_dir), torch.device(device)
    model = model.to(device).eval()
    backend = memory_backend(model.config, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    return model, out_dir, device, backend


def evaluate(model: MemAE, dataset: VideoDataset, clip_len: int, out_dir, device="cpu",
             batch_size: int = 16, amp: str = "none", plots: bool = True,
             progress: bool = True, address_clips: int = 16, extra: Optional[dict] = None) -> dict:
    """Score every test frame, compute AUROCs, write out_dir/results.json, scores.npz and
    (plots=True) regularity.png, roc.png, examples.png. Returns the results dict."""
    from tqdm import tqdm

    if not dataset.test or dataset.labels is None:
        raise ValueError(f"{dataset.name} has no labelled test videos to evaluate on")
    model, out_dir, device, backend = prepare_evaluation(model, out_dir, device)
    started = time.time()
    errors = []
    for video in tqdm(dataset.test, desc="scoring test videos", disable=None if progress else True,
                      leave=False):
        errors.append(video_errors(model, video.frames(), clip_len, batch_size, device, amp))
    anomaly = [1.0 - regularity(e) for e in errors]
    labels = [np.asarray(l, dtype=np.uint8) for l in dataset.labels]
    everything = range(len(errors))
    results = {
        "dataset": dataset.name,
        "variant": model.config.variant,
        "backend": backend,
        "device": str(device),
        "clip_len": clip_len,
        "test_videos": len(errors),
        "frames": int(sum(len(e) for e in errors)),
        "frames_scored": int(sum((~np.isnan(e)).sum() for e in errors)),
        "auc": auroc(*pooled(anomaly, labels, everything)),
        "auc_raw_error": auroc(*pooled(errors, labels, everything)),
    }
    if dataset.kinds is not None:
        results["auc_by_kind"] = {
            kind: auroc(*pooled(anomaly, labels, [i for i, k in enumerate(dataset.kinds) if k == kind]))
            for kind in dict.fromkeys(dataset.kinds)}
    results["per_video"] = [
        {"name": v.name, "kind": dataset.kinds[i] if dataset.kinds else None,
         "frames": len(v), "anomalous_frames": int(labels[i].sum()),
         "auc": auroc(*pooled(anomaly, labels, [i]))}
        for i, v in enumerate(dataset.test)]
    sample = ClipDataset(dataset.test, clip_len)
    picks = np.linspace(0, len(sample) - 1, min(address_clips, len(sample))).round().astype(int)
    clips = torch.stack([sample[i] for i in picks]).to(device)
    with autocast(device, amp):
        results["addressing"] = addressing_stats(model, clips)
    results["seconds"] = time.time() - started
    if extra:
        results.update(extra)
    np.savez_compressed(out_dir / "scores.npz",
                        **{f"{v.name}/error": e for v, e in zip(dataset.test, errors)},
                        **{f"{v.name}/label": l for v, l in zip(dataset.test, labels)})
    if plots:
        results["plots"] = _plots(model, dataset, errors, anomaly, labels, clip_len, out_dir,
                                  device, amp)
    write_results(results, out_dir / "results.json")
    return results


def _json_safe(value):
    # An undefined AUROC is NaN, which JSON has no word for: it is written as null.
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_results(results: dict, path: Path) -> None:
    """results as strict JSON (NaN as null)."""
    with open(path, "w") as f:
        json.dump(_json_safe(results), f, indent=2, allow_nan=False)


# ----------------------------------------------------------------------------- plots


def _show_frame(ax, frame: torch.Tensor) -> None:
    """A (C, H, W) frame in [-1, 1]: gray with C = 1, colour with C = 3."""
    if frame.shape[0] == 1:
        ax.imshow(frame[0].numpy(), cmap="gray", vmin=-1, vmax=1)
    else:
        ax.imshow(((frame.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())


def save_roc_plot(curves, title: str, path: Path) -> None:
    """ROC curves, one per (name, scores, labels), with their AUROCs, into `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, scores, truth in curves:
        fpr, tpr = roc_curve(scores, truth)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auroc(scores, truth):.3f})")
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _spans(labels: np.ndarray):
    edges = np.diff(np.r_[0, labels.astype(np.int8), 0])
    return zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0])


def _plots(model, dataset, errors, anomaly, labels, clip_len, out_dir: Path, device, amp):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = dataset.kinds or [None] * len(errors)
    # One video per anomaly type first, then the rest, up to eight panels.
    firsts = list(dict.fromkeys(kinds).keys())
    shown = [kinds.index(k) for k in firsts]
    shown += [i for i in range(len(errors)) if i not in shown]
    shown = shown[:8]

    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 1.8 * len(shown)), squeeze=False)
    for ax, i in zip(axes[:, 0], shown):
        ax.plot(1.0 - anomaly[i], color="tab:blue", lw=1.2)
        for a, b in _spans(labels[i]):
            ax.axvspan(a - 0.5, b - 0.5, color="tab:red", alpha=0.2, lw=0)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("regularity")
        ax.set_title(f"{dataset.test[i].name}" + (f" ({kinds[i]})" if kinds[i] else ""), fontsize=9)
    axes[-1, 0].set_xlabel("frame (anomalous frames shaded)")
    fig.tight_layout()
    fig.savefig(out_dir / "regularity.png", dpi=100)
    plt.close(fig)

    groups = [("all", list(range(len(errors))))]
    if dataset.kinds:
        groups += [(k, [i for i, kk in enumerate(kinds) if kk == k]) for k in firsts]
    save_roc_plot([(name, *pooled(anomaly, labels, idx)) for name, idx in groups],
                  f"{model.config.variant} on {dataset.name}", out_dir / "roc.png")

    # Input, reconstruction and error map of the centre frame of the clip with the largest
    # error inside an anomalous span, per shown video (up to four).
    rows = []
    for i in shown[:4]:
        scored = np.where(~np.isnan(errors[i]) & (labels[i] > 0), errors[i], -np.inf)
        if not np.isfinite(scored).any():
            scored = np.nan_to_num(errors[i], nan=-np.inf)
        centre = int(np.argmax(scored))
        start = centre - clip_len // 2
        x = frames_to_tensor(dataset.test[i].frames(start, start + clip_len))[None].to(device)
        with torch.no_grad(), autocast(device, amp):
            recon = model(x).recon.float()
        k = clip_len // 2
        rows.append((dataset.test[i].name, dataset.test[i].frame_name(centre), x[0, :, k].cpu(),
                     recon[0, :, k].clamp(-1, 1).cpu()))
    fig, axes = plt.subplots(len(rows), 3, figsize=(8.5, 2.5 * len(rows)), squeeze=False)
    for (name, frame, x, r), ax in zip(rows, axes):
        err = (r - x).pow(2).sum(0).sqrt()
        for a, frame_chw in zip(ax[:2], (x, r)):
            _show_frame(a, frame_chw)
        shown_err = ax[2].imshow(err.numpy(), cmap="inferno", vmin=0, vmax=2)
        fig.colorbar(shown_err, ax=ax[2], fraction=0.046, pad=0.04,
                     label="per-pixel L2 error on [-1, 1]")
        ax[0].set_ylabel(f"{name}\nframe {frame}", fontsize=8)
        for a, title in zip(ax, ("input", "reconstruction", "|error|")):
            a.set_title(title, fontsize=9)
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    fig.savefig(out_dir / "examples.png", dpi=100)
    plt.close(fig)
    return ["regularity.png", "roc.png", "examples.png"]


def format_results(results: dict) -> str:
    lines = [f"{results['variant']} on {results['dataset']}: frame-level AUROC {results['auc']:.4f} "
             f"(raw error, no per-video normalisation: {results['auc_raw_error']:.4f}; "
             f"{results['frames_scored']}/{results['frames']} frames scored)"]
    for kind, value in results.get("auc_by_kind", {}).items():
        lines.append(f"  {kind:>16}: {value:.4f}")
    a = results.get("addressing")
    if a:
        lines.append(f"  memory addressing on {a['queries']} queries: {a['nonzero_per_query_mean']:.2f} "
                     f"non-zero weights per query (max {a['nonzero_per_query_max']}), "
                     f"{100 * a['empty_row_fraction']:.1f}% empty rows, "
                     f"{a['slots_used']}/{a['num_slots']} slots used "
                     f"({a['effective_slots']:.1f} effective), mean top weight {a['max_weight_mean']:.3f}")
    return "\n".join(lines)
