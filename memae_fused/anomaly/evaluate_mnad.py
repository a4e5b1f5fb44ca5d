"""MNAD's scoring, as the authors' evaluation computes it: per test frame the PSNR of the
prediction (or reconstruction) and the feature distance (the compactness loss: mean squared
distance of the queries to their nearest items), each min-max normalised per video, combined
as alpha * (1 - g(PSNR)) + (1 - alpha) * g(distance); and the test-time update: after a frame
is scored, the memory takes its queries when the frame's weighted error is below a threshold.
Frames go in order, one memory across all test videos; the prediction model scores no frame
before its fifth (no full input window).
"""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
import torch

from memae_fused.anomaly.data import VideoDataset, frames_to_tensor
from memae_fused.anomaly.evaluate import (min_max, pooled, prepare_evaluation, save_roc_plot,
                                          write_results)
from memae_fused.anomaly.metrics import auroc
from memae_fused.anomaly.train import autocast

# (alpha, test-time update threshold) per variant, the authors' values.
SCORE_SETTINGS = {"mnad-pred": (0.6, 0.01), "mnad-recon": (0.7, 0.015)}


def weighted_error(recon01: torch.Tensor, target01: torch.Tensor) -> float:
    """The update test's error: e = per-pixel squared error, w = 1 - exp(-e),
    sum(w e) / sum(w)."""
    e = (recon01 - target01).pow(2)
    w = 1.0 - torch.exp(-e)
    total = w.sum()
    return float((w * e).sum() / total) if total > 0 else 0.0


@torch.no_grad()
def mnad_frame_scores(model, dataset: VideoDataset, device, amp: str = "none",
                      test_time_update: bool = True):
    """Per test video, (PSNR, feature distance) per frame (NaN where not scored), the
    number of test-time updates, and how many queries took each item as their top-1."""
    cfg = model.config
    context = cfg.clip_len
    _, threshold = SCORE_SETTINGS[cfg.variant]
    psnrs, distances, updates = [], [], 0
    usage = np.zeros(cfg.num_items if cfg.use_memory else 0, np.int64)
    for video in dataset.test:
        frames = frames_to_tensor(video.frames())  # (C, T, H, W)
        psnr = np.full(len(video), np.nan)
        distance = np.full(len(video), np.nan)
        for t in range(context - 1, len(video)):
            clip = frames[:, t - context + 1:t + 1][None].to(device)
            with autocast(device, amp):
                out = model(clip, update=False, return_weights=cfg.use_memory)
            recon01, target01 = (out.recon.float() + 1) / 2, (out.target.float() + 1) / 2
            mse = float((recon01 - target01).pow(2).mean())
            psnr[t] = 10 * math.log10(1.0 / max(mse, 1e-12))
            distance[t] = float(out.compactness)
            if cfg.use_memory:
                usage += np.bincount(out.weights.argmax(dim=1).flatten().cpu().numpy(),
                                     minlength=cfg.num_items)
                if test_time_update and weighted_error(recon01, target01) < threshold:
                    model.memory.update_with(out.queries)
                    updates += 1
        psnrs.append(psnr)
        distances.append(distance)
    return psnrs, distances, updates, usage


def item_usage(usage: np.ndarray) -> Optional[dict]:
    """Queries per item (top-1 assignments over the test set), the share of the most used
    item and the items never used: the reproducibility study's collapse check."""
    if usage.size == 0:
        return None
    total = int(usage.sum())
    return {"queries_per_item": usage.tolist(),
            "most_used_fraction": float(usage.max() / total) if total else float("nan"),
            "unused_items": int((usage == 0).sum())}


def evaluate_mnad(model, dataset: VideoDataset, out_dir, device="cpu", amp: str = "none",
                  plots: bool = True, test_time_update: bool = True,
                  extra: Optional[dict] = None) -> dict:
    """Score every test frame (with the test-time update unless disabled), compute the
    frame AUROC overall and per anomaly type, write out_dir/results.json, scores.npz (per
    test video its frames' score, PSNR, feature distance and label; NaN where not scored) and
    (plots=True) roc.png. The model's memory is updated in place by the test-time update."""
    if not dataset.test or dataset.labels is None:
        raise ValueError(f"{dataset.name} has no labelled test videos to evaluate on")
    model, out_dir, device, backend = prepare_evaluation(model, out_dir, device)
    started = time.time()
    alpha, threshold = SCORE_SETTINGS[model.config.variant]
    psnrs, distances, updates, usage = mnad_frame_scores(model, dataset, device, amp,
                                                         test_time_update)
    if not model.config.use_memory:
        alpha = 1.0  # no items, no feature distance: the PSNR alone
    scores = [alpha * (1 - min_max(p)) + (1 - alpha) * min_max(d) for p, d in zip(psnrs, distances)]
    labels = [np.asarray(lab, dtype=np.uint8) for lab in dataset.labels]
    everything = range(len(scores))
    all_psnr = np.concatenate(psnrs)  # lower PSNR, more anomalous; no normalisation
    results = {
        "dataset": dataset.name, "variant": model.config.variant,
        "use_memory": model.config.use_memory, "backend": backend, "device": str(device),
        "alpha": alpha, "update_threshold": threshold if test_time_update else None,
        "test_videos": len(scores), "frames": int(sum(len(s) for s in scores)),
        "frames_scored": int(sum((~np.isnan(s)).sum() for s in scores)),
        "auc": auroc(*pooled(scores, labels, everything)),
        "auc_psnr_only": auroc(-all_psnr[~np.isnan(all_psnr)], np.concatenate(labels)[~np.isnan(all_psnr)]),
        "test_time_updates": updates,
        "item_usage": item_usage(usage),
    }
    if dataset.kinds is not None:
        results["auc_by_kind"] = {
            kind: auroc(*pooled(scores, labels, [i for i, k in enumerate(dataset.kinds) if k == kind]))
            for kind in dict.fromkeys(dataset.kinds)}
    results["seconds"] = time.time() - started
    if extra:
        results.update(extra)
    np.savez_compressed(out_dir / "scores.npz", **{
        f"{video.name}/{key}": value for video, *values in zip(dataset.test, scores, psnrs,
                                                                distances, labels)
        for key, value in zip(("score", "psnr", "distance", "label"), values)})
    if plots:
        save_roc_plot([("all", *pooled(scores, labels, everything))], f"{model.config.variant} on {dataset.name}",
                      out_dir / "roc.png")
        results["plots"] = ["roc.png"]
    write_results(results, out_dir / "results.json")
    return results


def format_mnad_results(results: dict) -> str:
    lines = [f"{results['variant']}{'' if results['use_memory'] else ' (no memory)'} on "
             f"{results['dataset']}: frame-level AUROC {results['auc']:.4f} (PSNR alone "
             f"{results['auc_psnr_only']:.4f}; {results['frames_scored']}/{results['frames']} "
             f"frames scored, {results['test_time_updates']} test-time updates)"]
    for kind, value in results.get("auc_by_kind", {}).items():
        lines.append(f"  {kind:>16}: {value:.4f}")
    usage = results.get("item_usage")
    if usage:
        lines.append(f"  item usage: {usage['most_used_fraction']:.1%} of queries on the most used "
                     f"item, {usage['unused_items']} of {len(usage['queries_per_item'])} items unused")
    return "\n".join(lines)
