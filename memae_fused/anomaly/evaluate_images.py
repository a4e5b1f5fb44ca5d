"""Evaluation on images: per-pixel anomaly maps from the reconstruction error, image AUROC,
pixel AUROC and AUPRO where there are masks, per-kind AUROCs, results.json and plots.

The anomaly map of an image is the per-pixel L2 norm over channels of (reconstruction -
input) on [-1, 1] images. Its image score is the map's maximum (anomalib's convention, the
default for defect sets) or its mean (the reconstruction error the MemAE paper scores its
one-class MNIST and CIFAR-10 runs with, the default there); both AUROCs are recorded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from memae_fused.anomaly.data import ImageDataset, ImageTensors
from memae_fused.anomaly.metrics import aupro, image_auroc, image_scores, pixel_auroc
from memae_fused.anomaly.evaluate import prepare_evaluation, save_roc_plot, write_results
from memae_fused.anomaly.train import autocast

SCORE_REDUCTIONS = ("max", "mean")


@torch.no_grad()
def anomaly_maps(model, images: ImageTensors, batch_size: int, device, amp: str = "none"):
    """(N, H, W) float32 anomaly maps of every image."""
    maps = []
    for start in range(0, len(images), batch_size):
        x = torch.stack([images[i] for i in range(start, min(start + batch_size, len(images)))]).to(device)
        with autocast(device, amp):
            recon = model(x).recon
        maps.append((recon.float() - x).pow(2).sum(dim=1).sqrt().cpu())
    return torch.cat(maps).numpy() if maps else np.zeros((0, 0, 0), np.float32)


def evaluate_images(model, dataset: ImageDataset, out_dir, device="cpu", batch_size: int = 32,
                    amp: str = "none", score: str = "max", plots: bool = True,
                    extra: Optional[dict] = None) -> dict:
    """Score every test image; write out_dir/results.json, scores.npz and (plots=True)
    roc.png and overlays.png. Returns the results dict: image_auroc (with `score`'s
    reduction), image_auroc_max and image_auroc_mean, auroc_by_kind (each kind of anomaly
    against the normal images), and pixel_auroc and aupro (FPR up to 0.3) when the set has
    masks."""
    if score not in SCORE_REDUCTIONS:
        raise ValueError(f"--image-score must be one of {SCORE_REDUCTIONS}, got {score!r}")
    if len(dataset.test) == 0:
        raise ValueError(f"{dataset.name} has no test images to evaluate on")
    model, out_dir, device, backend = prepare_evaluation(model, out_dir, device)
    started = time.time()
    maps = anomaly_maps(model, ImageTensors(dataset.test), batch_size, device, amp)
    labels = np.asarray(dataset.labels, dtype=np.uint8)
    by_reduction = {r: image_scores(maps, r) for r in SCORE_REDUCTIONS}
    scores = by_reduction[score]
    kinds = np.asarray(dataset.kinds)
    normal = labels == 0
    results = {
        "dataset": dataset.name,
        "variant": model.config.variant,
        "backend": backend,
        "device": str(device),
        "test_images": int(len(labels)),
        "anomalous_images": int(labels.sum()),
        "image_score": score,
        "image_auroc": image_auroc(scores, labels),
        "image_auroc_max": image_auroc(by_reduction["max"], labels),
        "image_auroc_mean": image_auroc(by_reduction["mean"], labels),
        "auroc_by_kind": {
            kind: image_auroc(scores[normal | (kinds == kind)], labels[normal | (kinds == kind)])
            for kind in dict.fromkeys(kinds[labels > 0].tolist())},
    }
    masks = None
    if dataset.masks is not None:
        masks = np.stack([dataset.mask(i) for i in range(len(dataset.test))])
        results["pixel_auroc"] = pixel_auroc(maps, masks)
        results["aupro"] = aupro(maps, masks, max_fpr=0.3)
    results["seconds"] = time.time() - started
    if extra:
        results.update(extra)
    np.savez_compressed(out_dir / "scores.npz", scores=scores, labels=labels, maps=maps.astype(np.float16))
    if plots:
        results["plots"] = _plots(model, dataset, maps, scores, labels, masks, out_dir)
    write_results(results, out_dir / "results.json")
    return results


def format_image_results(results: dict) -> str:
    line = (f"{results['variant']} on {results['dataset']}: image AUROC {results['image_auroc']:.4f} "
            f"({results['image_score']} of the anomaly map; max {results['image_auroc_max']:.4f}, "
            f"mean {results['image_auroc_mean']:.4f}), {results['test_images']} test images")
    if "pixel_auroc" in results:
        line += f"; pixel AUROC {results['pixel_auroc']:.4f}, AUPRO {results['aupro']:.4f}"
    return line


def _plots(model, dataset, maps, scores, labels, masks, out_dir: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    save_roc_plot([("images", scores, labels)], f"{model.config.variant} on {dataset.name}",
                  out_dir / "roc.png")

    # The highest-scoring anomalous images and the highest-scoring normal one: the image, its
    # anomaly map over it, and the ground-truth contour where there is a mask.
    anomalous = [int(i) for i in np.argsort(-scores) if labels[i]][:3]
    normal = [int(i) for i in np.argsort(-scores) if not labels[i]][:1]
    shown = anomalous + normal
    vmax = float(np.percentile(maps, 99.5)) if maps.size else 1.0
    fig, axes = plt.subplots(len(shown), 2, figsize=(5.5, 2.6 * len(shown)), squeeze=False)
    for i, ax in zip(shown, axes):
        image = dataset.test.image(i)
        gray = image[..., 0] if image.shape[-1] == 1 else None
        ax[0].imshow(gray if gray is not None else image, cmap="gray" if gray is not None else None)
        ax[1].imshow(gray if gray is not None else image, cmap="gray" if gray is not None else None)
        heat = ax[1].imshow(maps[i], cmap="jet", alpha=0.5, vmin=0, vmax=vmax)
        if masks is not None and masks[i].any():
            for a in ax:
                a.contour(masks[i], levels=[0.5], colors="white", linewidths=1)
        ax[0].set_ylabel(f"{dataset.test.names[i]}\n{dataset.kinds[i]}, score {scores[i]:.3f}", fontsize=8)
        fig.colorbar(heat, ax=ax[1], fraction=0.046, pad=0.04, label="anomaly map")
        for a, title in zip(ax, ("input" + (" (ground truth contour)" if masks is not None else ""),
                                 "anomaly map")):
            a.set_title(title, fontsize=9)
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    fig.savefig(out_dir / "overlays.png", dpi=100)
    plt.close(fig)
    return ["roc.png", "overlays.png"]
