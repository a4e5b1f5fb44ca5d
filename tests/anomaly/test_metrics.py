"""memae_fused.anomaly.metrics: image scores, image/pixel AUROC, the PRO curve and AUPRO on
hand-computed cases and against slow brute-force versions."""

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from memae_fused.anomaly.metrics import (aupro, image_auroc, image_scores, mean_auroc,
                                         per_class_table, pixel_auroc, pro_curve)


# ----------------------------------------------------------------------------- hand example
#
# Two 4x4 images. Image 0 holds two regions, image 1 is normal (all pixels not listed are 0):
#
#   image 0 mask        image 0 map              image 1 map
#   1 . . .             .9  0  0 .7              .5  0  0  0
#   . 1 . .             0  .5  0  0              0   0  0  0
#   . . . .             0   0  0  0              0   0 .6  0
#   . 1 1 1             0  .8 .8 .2              0   0  0  0
#
# With 8-connectivity, (0,0) and (1,1) touch diagonally only and form ONE region R1 of
# 2 pixels; R2 = row 3, columns 1-3, has 3 pixels. So 2 regions, and a hit pixel of R1 adds
# 1/(2*2) = 1/4 to PRO, one of R2 adds 1/(2*3) = 1/6. (With 4-connectivity R1 would be two
# regions and the first step below would be 1/3, not 1/4.) Normal pixels: 11 in image 0 plus
# 16 in image 1 = 27. A pixel is "predicted anomalous" when map >= t:
#
#   t     new pixels                    FP   FPR     PRO
#   inf   -                             0    0       0
#   .9    R1(0,0)                       0    0       1/4
#   .8    R2(3,1), R2(3,2)              0    0       1/4 + 2/6 = 7/12
#   .7    normal (0,3) of image 0       1    1/27    7/12
#   .6    normal (2,2) of image 1       2    2/27    7/12
#   .5    R1(1,1) and normal (0,0) of   3    3/27    7/12 + 1/4 = 5/6   (the tie moves
#         image 1, together                                           both at once)
#   .2    R2(3,3)                       3    3/27    1
#   0     all the rest                  27   1       1
#
# Trapezoids: [0, 2/27] at 7/12 -> 7/162; [2/27, 3/27] from 7/12 to 5/6 ->
# (1/27)(7/12 + 5/6)/2 = 17/648; the vertical step at 3/27 adds 0; then PRO = 1.
#   max_fpr = 0.3:  the point at 0.3 is interpolated between (3/27, 1) and (1, 1) -> 1;
#                   area = 7/162 + 17/648 + (0.3 - 1/9) = 837/3240; AUPRO = 837/972 = 31/36.
#   max_fpr = 1.0:  area = 7/162 + 17/648 + 8/9 = 3105/3240 = 23/24.
#   max_fpr = 3/27: the curve stops after the vertical step at 3/27 (PRO 1);
#                   area = 225/3240 = 5/72; AUPRO = (5/72) * 9 = 5/8.
#   max_fpr = 2.5/27 = 5/54: interpolation between (2/27, 7/12) and (3/27, 5/6) half-way:
#                   PRO = 7/12 + (5/6 - 7/12)/2 = 17/24;
#                   area = 7/162 + (1/54)(7/12 + 17/24)/2 = 143/2592; AUPRO = 143/240.


def hand_example():
    maps = np.zeros((2, 4, 4))
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = 1
    masks[0, 3, 1:4] = 1
    maps[0, 0, 0], maps[0, 1, 1], maps[0, 0, 3] = 0.9, 0.5, 0.7
    maps[0, 3, 1:4] = [0.8, 0.8, 0.2]
    maps[1, 0, 0], maps[1, 2, 2] = 0.5, 0.6
    return maps, masks


HAND_FPR = np.array([0, 0, 0, 1, 2, 3, 3]) / 27
HAND_PRO = np.array([0, 1 / 4, 7 / 12, 7 / 12, 7 / 12, 5 / 6, 1])


def test_hand_pro_curve_default_max_fpr():
    fpr, pro = pro_curve(*hand_example())
    np.testing.assert_allclose(fpr, np.append(HAND_FPR, 0.3), rtol=0, atol=1e-12)
    np.testing.assert_allclose(pro, np.append(HAND_PRO, 1.0), rtol=0, atol=1e-12)
    assert aupro(*hand_example()) == pytest.approx(31 / 36, abs=1e-12)


def test_hand_max_fpr_one():
    fpr, pro = pro_curve(*hand_example(), max_fpr=1.0)
    np.testing.assert_allclose(fpr, np.append(HAND_FPR, 1.0), atol=1e-12)
    np.testing.assert_allclose(pro, np.append(HAND_PRO, 1.0), atol=1e-12)
    assert aupro(*hand_example(), max_fpr=1.0) == pytest.approx(23 / 24, abs=1e-12)


def test_hand_max_fpr_on_a_point_keeps_the_vertical_step():
    fpr, pro = pro_curve(*hand_example(), max_fpr=3 / 27)
    np.testing.assert_allclose(fpr, HAND_FPR, atol=1e-12)
    np.testing.assert_allclose(pro, HAND_PRO, atol=1e-12)
    assert aupro(*hand_example(), max_fpr=3 / 27) == pytest.approx(5 / 8, abs=1e-12)


def test_hand_interpolation_at_max_fpr():
    fpr, pro = pro_curve(*hand_example(), max_fpr=5 / 54)
    np.testing.assert_allclose(fpr, np.append(HAND_FPR[:5], 5 / 54), atol=1e-12)
    np.testing.assert_allclose(pro, np.append(HAND_PRO[:5], 17 / 24), atol=1e-12)
    assert aupro(*hand_example(), max_fpr=5 / 54) == pytest.approx(143 / 240, abs=1e-12)


def test_hand_diagonal_pixels_are_one_region():
    # Only the R1 pixel (0,0) scores above 0: 8-connectivity gives PRO 1/4 at FPR 0 (half of
    # one of two regions); 4-connectivity would give 1/3 (one of three regions).
    maps, masks = hand_example()
    maps = np.zeros_like(maps)
    maps[0, 0, 0] = 1.0
    fpr, pro = pro_curve(maps, masks)
    assert fpr[1] == 0 and pro[1] == pytest.approx(0.25, abs=1e-12)


# ----------------------------------------------------------------------------- PRO edge cases


def blobs(rng, n, h, w, normal_images=1):
    """Random blob masks (thresholded smoothed noise); the first normal_images are empty."""
    noise = ndimage.gaussian_filter(rng.standard_normal((n, h, w)), sigma=(0, 1.5, 1.5))
    masks = (noise > np.quantile(noise, 0.8)).astype(np.uint8)
    masks[:normal_images] = 0
    return masks


def test_perfect_and_inverted_detectors():
    rng = np.random.default_rng(0)
    masks = blobs(rng, 4, 16, 16)
    perfect = masks + 0.5 * rng.random(masks.shape)
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(perfect, masks, max_fpr=1.0) == pytest.approx(1.0, abs=1e-12)
    assert pixel_auroc(perfect, masks) == 1.0
    inverted = -perfect
    assert aupro(inverted, masks) == pytest.approx(0.0, abs=1e-12)
    assert pixel_auroc(inverted, masks) == 0.0


def test_constant_map_is_the_diagonal():
    masks = blobs(np.random.default_rng(1), 3, 10, 10)
    fpr, pro = pro_curve(np.zeros(masks.shape), masks, max_fpr=1.0)
    np.testing.assert_allclose(fpr, [0, 1])
    np.testing.assert_allclose(pro, [0, 1])
    assert aupro(np.zeros(masks.shape), masks) == pytest.approx(0.15)  # (0.3 * 0.3 / 2) / 0.3


def test_no_region_or_no_normal_pixel_is_nan():
    maps = np.random.default_rng(2).random((2, 5, 5))
    assert math.isnan(aupro(maps, np.zeros(maps.shape)))
    assert math.isnan(aupro(maps, np.ones(maps.shape)))
    fpr, pro = pro_curve(maps, np.zeros(maps.shape))
    assert fpr.size == 0 and pro.size == 0


def test_pro_errors():
    maps = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 4, 5\)"):
        aupro(maps, np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(*hand_example(), max_fpr=0.0)
    with pytest.raises(ValueError, match="max_fpr"):
        pro_curve(*hand_example(), max_fpr=1.5)
    with pytest.raises(ValueError, match="0 and 1"):
        aupro(maps, np.full((2, 4, 4), 255))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        aupro(np.zeros((4, 4)), np.zeros((4, 4)))


# ----------------------------------------------------------------------------- brute force


def brute_force_aupro(maps, masks, max_fpr):
    """Obviously-correct AUPRO: label each image's mask (8-connectivity), evaluate FPR and
    mean region overlap at every distinct threshold (map >= t), then integrate the polyline
    clipped to [0, max_fpr]."""
    regions = []
    for image in range(len(masks)):
        labels, count = ndimage.label(masks[image], structure=np.ones((3, 3)))
        regions += [(image, labels == k) for k in range(1, count + 1)]
    normal = maps[masks == 0]
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        fpr = np.mean(normal >= t)
        pro = np.mean([np.mean(maps[image][region] >= t) for image, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (f0, p0), (f1, p1) in zip(points[:-1], points[1:]):
        if f0 >= max_fpr:
            break
        if f1 > max_fpr:
            p1 = p0 + (p1 - p0) * (max_fpr - f0) / (f1 - f0)
            f1 = max_fpr
        area += (f1 - f0) * (p0 + p1) / 2
    return area / max_fpr


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_fpr", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force(seed, max_fpr):
    rng = np.random.default_rng(seed)
    masks = blobs(rng, 4, 12, 12)
    maps = rng.random(masks.shape) + 0.6 * masks
    if seed % 2:  # coarse values: many ties, within and across classes
        maps = np.round(maps * 8) / 8
    expected = brute_force_aupro(maps, masks, max_fpr)
    assert aupro(maps, masks, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-10)


def test_larger_set_runs_and_is_monotone():
    rng = np.random.default_rng(7)
    masks = blobs(rng, 8, 64, 64, normal_images=3)
    maps = (rng.random(masks.shape) + 0.4 * masks).astype(np.float32)
    fpr, pro = pro_curve(maps, masks)
    assert fpr[0] == 0 and pro[0] == 0 and fpr[-1] == pytest.approx(0.3)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    assert 0.0 < aupro(maps, masks) < 1.0


# ----------------------------------------------------------------------------- image level


def test_image_scores_max_and_mean():
    maps = np.arange(2 * 2 * 3, dtype=np.float64).reshape(2, 2, 3)
    np.testing.assert_array_equal(image_scores(maps), [5, 11])
    np.testing.assert_array_equal(image_scores(maps, "max"), [5, 11])
    np.testing.assert_allclose(image_scores(maps, reduction="mean"), [2.5, 8.5])
    with pytest.raises(ValueError, match="reduction"):
        image_scores(maps, reduction="median")


@pytest.mark.parametrize("seed", range(3))
def test_image_auroc_matches_mann_whitney(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(40) + 0.3 * labels, 1)  # rounded: ties count one half
    u = mannwhitneyu(scores[labels == 1], scores[labels == 0]).statistic
    expected = u / (np.sum(labels == 1) * np.sum(labels == 0))
    assert image_auroc(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_image_auroc_nan_and_errors():
    assert math.isnan(image_auroc([0.1, 0.2, 0.3], [1, 1, 1]))
    assert math.isnan(image_auroc([0.1, 0.2, 0.3], [0, 0, 0]))
    assert image_auroc([0.1, 0.9], [0, 1]) == 1.0
    with pytest.raises(ValueError, match=r"3 scores but 4 labels"):
        image_auroc([0.1, 0.2, 0.3], [0, 1, 0, 1])


def test_pixel_auroc():
    maps, masks = hand_example()
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(),
                                                                   maps.ravel()))
    assert math.isnan(pixel_auroc(maps, np.zeros(maps.shape)))
    assert math.isnan(pixel_auroc(maps, np.ones(maps.shape)))
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 16\)"):
        pixel_auroc(maps, masks.reshape(2, 16))


# ----------------------------------------------------------------------------- reporting


def test_per_class_table_and_mean():
    results = {"bottle": 0.98765, "cable": float("nan"), "grid": 0.5}
    assert mean_auroc(results) == pytest.approx((0.98765 + 0.5) / 2)
    assert per_class_table(results) == ("| class | AUROC |\n|---|---|\n| bottle | 0.9877 |\n"
                                        "| cable | nan |\n| grid | 0.5000 |\n"
                                        "| mean | 0.7438 |")
    assert math.isnan(mean_auroc({"a": float("nan")}))
