"""The one-class benchmark of the MemAE paper's image experiments: every class of a labelled
image set (digits, MNIST, CIFAR-10) is normal in turn, a model is trained on that class's
training images and tested on all test images (the other classes anomalous); the table holds
the image AUROC per class and model and its mean over the classes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from memae_fused.anomaly.data import load_image_dataset
from memae_fused.anomaly.evaluate import write_results
from memae_fused.anomaly.evaluate_images import evaluate_images
from memae_fused.anomaly.metrics import mean_auroc
from memae_fused.anomaly.presets import image_preset, image_run_configs
from memae_fused.anomaly.train import load_model, resolve_device, train


def run_one_class(data: str, models: Sequence[str], classes: Sequence[int], seeds: Sequence[int],
                  out_dir, *, epochs=None, score=None, device="auto", overwrite=False,
                  progress=True, log=print, **options) -> dict:
    """Train and evaluate every (model, class, seed); write out_dir/<model>/seed<S>/class<K>/
    (checkpoint, train_log.jsonl, eval/results.json), out_dir/table.md and
    out_dir/results.json. Returns the results: per_run, auroc (model -> class -> mean over
    seeds), mean_auroc (model -> mean over classes), settings, seconds."""
    out_dir = Path(out_dir)
    if not classes or any(not 0 <= k <= 9 for k in classes):
        raise ValueError(f"--classes: the one-class sets have classes 0-9, got {list(classes)}")
    started = time.time()
    kind_preset = image_preset(data.partition(":")[0])
    score = score or kind_preset["score"]
    runs: List[dict] = []
    settings: Dict[str, dict] = {}
    for normal_class in classes:
        dataset = None  # loaded once per class: every model and seed sees the same split
        for model in models:
            for seed in seeds:
                model_cfg, data_cfg, train_cfg = image_run_configs(
                    data=data, model=model, normal_class=normal_class, seed=seed, epochs=epochs,
                    device=device, progress=progress, **options)
                settings[model] = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
                run_dir = out_dir / model / f"seed{seed}" / f"class{normal_class}"
                if dataset is None:
                    dataset = load_image_dataset(data_cfg)
                try:
                    trained = train(model_cfg, data_cfg, train_cfg, run_dir, dataset=dataset,
                                    overwrite=overwrite, log=lambda *a: None)
                except FileExistsError:
                    raise FileExistsError(f"{run_dir} holds a run of an earlier benchmark; pass "
                                          "--overwrite to replace it, or another --out") from None
                net, _ = load_model(trained["checkpoint"], resolve_device(device))
                results = evaluate_images(net, dataset, run_dir / "eval", device=resolve_device(device),
                                          score=score, plots=False,
                                          extra={"train_seconds": trained["seconds"]})
                runs.append({"model": model, "class": normal_class, "seed": seed,
                             "auroc": results["image_auroc"],
                             "auroc_max": results["image_auroc_max"],
                             "auroc_mean": results["image_auroc_mean"],
                             "train_seconds": trained["seconds"]})
                log(f"{model:>14} class {normal_class} seed {seed}: AUROC {results['image_auroc']:.4f} "
                    f"({trained['seconds']:.0f} s)")
    auroc = {model: {str(k): float(np.mean([r["auroc"] for r in runs
                                            if r["model"] == model and r["class"] == k]))
                     for k in classes} for model in models}
    summary = {
        "data": data, "image_score": score, "classes": list(classes), "seeds": list(seeds),
        "auroc": auroc,
        "mean_auroc": {model: mean_auroc(per_class) for model, per_class in auroc.items()},
        "per_run": runs, "settings": settings, "seconds": time.time() - started,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results(summary, out_dir / "results.json")
    (out_dir / "table.md").write_text(format_table(summary) + "\n")
    return summary


def format_table(summary: dict) -> str:
    """Markdown: one row per class, one column per model, the mean row last."""
    models = list(summary["auroc"])
    lines = ["| normal class | " + " | ".join(models) + " |",
             "| --- | " + " | ".join("---" for _ in models) + " |"]
    for k in summary["classes"]:
        lines.append(f"| {k} | " + " | ".join(f"{summary['auroc'][m][str(k)]:.4f}" for m in models) + " |")
    lines.append("| mean | " + " | ".join(f"{summary['mean_auroc'][m]:.4f}" for m in models) + " |")
    return "\n".join(lines)
