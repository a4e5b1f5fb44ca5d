"""Image-level anomaly-detection metrics with the MVTec-AD conventions (as anomalib reports
them): image scores reduced from anomaly maps, image AUROC, pixel AUROC and the area under
the per-region overlap (PRO) curve up to a false-positive rate of 0.3.

Higher map values / scores mean "more anomalous"; label and mask value 1 means anomalous.

PRO convention used here (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021):

* each image's ground-truth mask is split into connected regions with 8-connectivity
  (``scipy.ndimage.label`` with a 3x3 structure of ones, never joining two images);
* a pixel is predicted anomalous at threshold ``t`` when ``map >= t`` (the same ``>=`` rule
  as ``sklearn.metrics.roc_curve``);
* the overlap of a region at ``t`` is the fraction of its pixels predicted anomalous, and
  PRO(t) is the mean overlap over all regions of all images (every region weighs the same,
  whatever its size);
* FPR(t) is the fraction of all normal pixels of the whole test set (mask == 0 in every
  image, normal images included) predicted anomalous;
* the curve has one point per distinct map value plus the starting point (0, 0) (threshold
  above every value), is cut at FPR = max_fpr with linear interpolation there, and AUPRO is
  its trapezoidal area on [0, max_fpr] divided by max_fpr (1.0 for a perfect detector).

The curve is computed exactly with a single sort: giving every anomalous pixel the weight
1 / (number of regions * size of its region) and every normal pixel the weight 1, the
weighted true-positive rate of ``roc_curve`` at ``t`` is exactly PRO(t) and its
false-positive rate is exactly FPR(t).
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Tuple

import numpy as np

__all__ = ["auroc", "roc_curve", "image_scores", "image_auroc", "pixel_auroc", "pro_curve",
           "aupro", "per_class_table", "mean_auroc"]

_REDUCTIONS = ("max", "mean")


# ----------------------------------------------------------------------------- ROC
# scikit-learn and SciPy are imported where used: the command imports this module, and most
# of its calls never compute a metric.


def _scores_and_labels(scores, labels):
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    return scores, labels


def auroc(scores, labels) -> float:
    """Area under the ROC curve (higher score = more anomalous, label 1 = anomalous), as
    scikit-learn's roc_auc_score computes it (ties count one half). NaN when a class is
    missing."""
    from sklearn.metrics import roc_auc_score

    scores, labels = _scores_and_labels(scores, labels)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def roc_curve(scores, labels):
    """(false-positive rates, true-positive rates), one point per distinct threshold, from
    (0, 0) to (1, 1): scikit-learn's roc_curve with every point kept."""
    from sklearn.metrics import roc_curve as sklearn_roc_curve

    scores, labels = _scores_and_labels(scores, labels)
    fpr, tpr, _ = sklearn_roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


# ----------------------------------------------------------------------------- helpers


def _binary(values: np.ndarray, what: str) -> np.ndarray:
    """values as a bool array; anything but 0/1 (or False/True) is an error."""
    values = np.asarray(values)
    if values.dtype == bool:
        return values
    if not np.all((values == 0) | (values == 1)):
        raise ValueError(f"{what} must hold only 0 and 1 (binarise them first)")
    return values.astype(bool)


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError(f"{what} contain NaN")
    return values


def _maps_and_masks(anomaly_maps, masks) -> Tuple[np.ndarray, np.ndarray]:
    anomaly_maps = np.asarray(anomaly_maps)
    masks = np.asarray(masks)
    if anomaly_maps.shape != masks.shape:
        raise ValueError(f"anomaly_maps have shape {anomaly_maps.shape} but masks have shape "
                         f"{masks.shape}; they must be equal")
    return _finite(anomaly_maps, "anomaly_maps"), _binary(masks, "masks")


# ----------------------------------------------------------------------------- image level


def image_scores(anomaly_maps: np.ndarray, reduction: str = "max") -> np.ndarray:
    """One anomaly score per image from maps of shape (N, H, W) (any (N, ...) shape is reduced
    over all axes but the first): the maximum of each map ("max", anomalib's default) or its
    mean ("mean"). Returns a float64 array of shape (N,)."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got reduction={reduction!r}")
    anomaly_maps = np.asarray(anomaly_maps, dtype=np.float64)
    if anomaly_maps.ndim < 2:
        raise ValueError(f"anomaly_maps must have shape (N, H, W), got {anomaly_maps.shape}")
    flat = anomaly_maps.reshape(anomaly_maps.shape[0], -1)
    if flat.shape[1] == 0:
        raise ValueError(f"anomaly_maps have no pixels: shape {anomaly_maps.shape}")
    return flat.max(axis=1) if reduction == "max" else flat.mean(axis=1)


def image_auroc(scores, labels) -> float:
    """Image-level AUROC (sklearn's roc_auc_score; ties count one half) of scores against
    labels (1 = anomalous image). NaN when only one class is present."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.size != labels.size:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    return auroc(_finite(scores, "scores"), _binary(labels, "labels"))


def pixel_auroc(anomaly_maps, masks) -> float:
    """Pixel-level AUROC over every pixel of every test image pooled together (the maps and
    the 0/1 masks must have equal shapes). NaN when there is no anomalous or no normal
    pixel."""
    anomaly_maps, masks = _maps_and_masks(anomaly_maps, masks)
    return auroc(anomaly_maps, masks)


# ----------------------------------------------------------------------------- PRO


def _label_regions(masks: np.ndarray) -> Tuple[np.ndarray, int]:
    """Connected regions (8-connectivity within each image, never across images) of masks of
    shape (N, H, W), labelled 1..count over the whole stack (0 = normal)."""
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 3x3 ones in the image plane, nothing along the image axis
    labels, count = ndimage.label(masks, structure=structure)
    return labels, int(count)


def _full_pro_curve(anomaly_maps, masks) -> Tuple[np.ndarray, np.ndarray]:
    """The whole PRO curve: FPR and PRO at (0, 0) and then at every distinct map value in
    decreasing order (ending at (1, 1)). Empty arrays when there is no region or no normal
    pixel."""
    anomaly_maps, masks = _maps_and_masks(anomaly_maps, masks)
    if anomaly_maps.ndim != 3:
        raise ValueError(f"anomaly_maps and masks must have shape (N, H, W), got "
                         f"{anomaly_maps.shape}")
    labels, count = _label_regions(masks)
    if count == 0 or masks.all():
        return np.zeros(0), np.zeros(0)
    labels = labels.reshape(-1)
    sizes = np.bincount(labels, minlength=count + 1).astype(np.float64)
    # A normal pixel weighs 1; a pixel of region r weighs 1 / (count * |r|), so the anomalous
    # weight with map >= t is the mean overlap over regions, i.e. PRO(t) (the weights of all
    # anomalous pixels add up to 1).
    weight_of_label = np.empty(count + 1)
    weight_of_label[0] = 1.0
    weight_of_label[1:] = 1.0 / (count * sizes[1:])
    from sklearn.metrics import roc_curve as sklearn_roc_curve

    fpr, pro, _ = sklearn_roc_curve(labels > 0, anomaly_maps.reshape(-1),
                            sample_weight=weight_of_label[labels], drop_intermediate=False)
    return fpr, pro


def pro_curve(anomaly_maps, masks, max_fpr: float = 0.3) -> Tuple[np.ndarray, np.ndarray]:
    """The per-region overlap curve on FPR in [0, max_fpr] (see the module docstring for the
    convention): arrays fpr and pro, nondecreasing, starting at (0, 0), one point per
    distinct map value whose FPR is at most max_fpr, and a final point at FPR = max_fpr
    interpolated linearly between its neighbours when no threshold lands there exactly.
    maps and masks have shape (N, H, W). Empty arrays when there is no anomalous region or
    no normal pixel."""
    max_fpr = float(max_fpr)
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, pro = _full_pro_curve(anomaly_maps, masks)
    if fpr.size == 0:
        return fpr, pro
    # Points with fpr <= max_fpr are a prefix (fpr is nondecreasing); the vertical steps at
    # fpr == max_fpr are kept whole.
    end = int(np.searchsorted(fpr, max_fpr, side="right"))
    fpr_cut, pro_cut = fpr[:end], pro[:end]
    if fpr_cut[-1] < max_fpr and end < fpr.size:
        f0, f1, p0, p1 = fpr[end - 1], fpr[end], pro[end - 1], pro[end]
        p = p0 + (p1 - p0) * (max_fpr - f0) / (f1 - f0)
        fpr_cut = np.append(fpr_cut, max_fpr)
        pro_cut = np.append(pro_cut, p)
    return fpr_cut, pro_cut


def aupro(anomaly_maps, masks, max_fpr: float = 0.3) -> float:
    """Area under the PRO curve on FPR in [0, max_fpr] (trapezoidal), divided by max_fpr so
    that a perfect detector scores 1.0 and one that ranks every normal pixel above every
    anomalous pixel scores 0.0. NaN when there is no anomalous region or no normal pixel."""
    fpr, pro = pro_curve(anomaly_maps, masks, max_fpr=max_fpr)
    if fpr.size == 0:
        return float("nan")
    area = float(np.sum(np.diff(fpr) * (pro[1:] + pro[:-1]) / 2.0))
    return area / float(max_fpr)


# ----------------------------------------------------------------------------- reporting


def mean_auroc(results: Mapping[str, float]) -> float:
    """Mean of the per-class values, NaN ones left out (NaN when none is left)."""
    values = [float(v) for v in results.values() if not math.isnan(float(v))]
    return float(np.mean(values)) if values else float("nan")


def per_class_table(results: Dict[str, float]) -> str:
    """A markdown table "| class | AUROC |" with one row per class (in the given order) and a
    final "| mean | x |" row (NaN classes left out of the mean); 4 decimals."""
    lines = ["| class | AUROC |", "|---|---|"]
    lines += [f"| {name} | {float(value):.4f} |" for name, value in results.items()]
    lines.append(f"| mean | {mean_auroc(results):.4f} |")
    return "\n".join(lines)
