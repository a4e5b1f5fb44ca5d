"""memae_fused.anomaly.data.images: image sets, the MVTec-AD and Folder layouts, digits,
MNIST and CIFAR-10 readers on tiny files written here, and the synthetic defect set."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from memae_fused.anomaly.data.images import (DEFECT_KINDS, ArrayImageSet, FileImageSet,
                                             ImageDataset, ImageTensors, _synthetic_sample,
                                             check_images, cifar10_one_class, digits_one_class,
                                             load_image_folder, load_mvtec, mnist_one_class,
                                             synthetic_defects)

from data_folders import make_folder, make_mvtec, write_image, write_mask

SIZE = (12, 16)


# ----------------------------------------------------------------------------- MVTec


def test_mvtec_layout_labels_kinds_masks_and_order(tmp_path):
    cat = make_mvtec(tmp_path)
    data = load_mvtec(tmp_path, "bottle", size=SIZE)
    assert data.name == "bottle"
    assert data.train.names == ["1", "2", "10"]  # natural order
    assert data.train.image(2)[0, 0].tolist() == [100, 0, 0]
    assert data.kinds == ["good", "good", "broken", "crack", "crack"]
    assert data.test.names == ["000", "001", "000", "2", "10"]
    assert data.labels.dtype == np.uint8 and data.labels.tolist() == [0, 0, 1, 1, 1]
    for i in range(len(data.test)):
        image = data.test.image(i)
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
        mask = data.mask(i)
        assert mask.shape == SIZE and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert not data.mask(0).any() and not data.mask(1).any()
    broken = np.zeros(SIZE, np.uint8)
    broken[6:, 8:] = 1
    assert np.array_equal(data.mask(2), broken)
    crack = np.zeros(SIZE, np.uint8)
    crack[:6, :8] = 1
    assert np.array_equal(data.mask(3), crack) and np.array_equal(data.mask(4), crack)
    # The category folder itself works as root.
    same = load_mvtec(cat, size=SIZE)
    assert same.kinds == data.kinds and same.test.names == data.test.names
    assert check_images(data.train) == [] and check_images(data.test) == []


def test_mvtec_grayscale_and_default_size(tmp_path):
    make_mvtec(tmp_path)
    gray = load_mvtec(tmp_path, "bottle", channels=1)
    assert gray.train.image(0).shape == (256, 256, 1)
    assert gray.test.image(0)[0, 0, 0] == 50
    assert gray.mask(2).shape == (256, 256)


def test_mvtec_errors(tmp_path):
    cat = make_mvtec(tmp_path)
    with pytest.raises(FileNotFoundError, match="no train/ and test/"):
        load_mvtec(tmp_path)  # root is not a category folder
    with pytest.raises(FileNotFoundError, match="carpet"):
        load_mvtec(tmp_path, "carpet")
    with pytest.raises(ValueError, match="channels must be 1"):
        load_mvtec(cat, channels=2)
    with pytest.raises(ValueError, match="size"):
        load_mvtec(cat, size=(0, 8))

    write_mask(cat / "ground_truth" / "crack" / "3_mask.png", (0, 0, 1, 1))  # no test image 3
    with pytest.raises(ValueError, match=r"mask .*3_mask\.png matches no image in .*crack"):
        load_mvtec(cat)
    (cat / "ground_truth" / "crack" / "3_mask.png").unlink()
    (cat / "ground_truth" / "crack" / "10_mask.png").rename(cat / "ground_truth" / "crack" / "10.png")
    with pytest.raises(FileNotFoundError, match=r"10\.png has no mask: expected .*10_mask\.png"):
        load_mvtec(cat)
    (cat / "ground_truth" / "crack" / "10.png").rename(cat / "ground_truth" / "crack" / "10_mask.png")
    write_mask(cat / "ground_truth" / "hole" / "000_mask.png", (0, 0, 1, 1))
    with pytest.raises(ValueError, match=r"000_mask\.png matches no image.*hole"):
        load_mvtec(cat)
    (cat / "ground_truth" / "hole" / "000_mask.png").unlink()
    load_mvtec(cat)  # repaired

    for f in (cat / "train" / "good").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match="train/good holds no images"):
        load_mvtec(cat)
    (cat / "train" / "good").rmdir()
    with pytest.raises(FileNotFoundError, match="train/good is not a folder"):
        load_mvtec(tmp_path, "bottle")


def test_error_messages_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mvtec(tmp_path / "missing")
    assert "\n" not in str(info.value) and "missing" in str(info.value)


# ----------------------------------------------------------------------------- Folder


def test_folder_layout_with_masks(tmp_path):
    root = make_folder(tmp_path / "toy")
    data = load_image_folder(root / "good", root / "bad", root / "good_test", root / "masks",
                             size=SIZE, channels=3)
    assert data.name == "toy"
    assert len(data.train) == 3 and data.train.image(1).shape == (*SIZE, 3)
    assert data.train.image(1)[0, 0].tolist() == [20, 20, 20]  # gray file read as RGB
    assert data.test.names == ["t1", "a", "b", "c10"]
    assert data.kinds == ["good", "abnormal", "abnormal", "abnormal"]
    assert data.labels.tolist() == [0, 1, 1, 1]
    assert not data.mask(0).any()
    left = np.zeros(SIZE, np.uint8)
    left[:, :8] = 1
    for i in (1, 2, 3):
        assert np.array_equal(data.mask(i), left)


def test_folder_layout_without_normal_test_or_masks(tmp_path):
    root = make_folder(tmp_path / "toy")
    data = load_image_folder(root / "good", root / "bad", size=SIZE, channels=1, name="named")
    assert data.name == "named" and data.masks is None and data.mask(0) is None
    assert data.labels.tolist() == [1, 1, 1] and data.test.image(0).shape == (*SIZE, 1)


@pytest.mark.parametrize("mask_names, match", [
    (("a_mask", "bb_mask", "c10_mask"), r"mask .*bb_mask\.png does not match abnormal image .*b\.png"),
    (("a_mask", "b"), r"abnormal image .*c10\.png has no mask"),
    (("a_mask", "b", "c10", "d_mask"), r"mask .*d_mask\.png matches no abnormal image"),
])
def test_folder_mask_pairing_errors(tmp_path, mask_names, match):
    root = make_folder(tmp_path / "toy", mask_names)
    with pytest.raises(ValueError, match=match):
        load_image_folder(root / "good", root / "bad", mask_dir=root / "masks")


def test_folder_missing_dirs(tmp_path):
    root = make_folder(tmp_path / "toy")
    with pytest.raises(FileNotFoundError, match="abnormal_dir .*nothing is not a folder"):
        load_image_folder(root / "good", root / "nothing")
    (root / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="normal_dir .*empty holds no images"):
        load_image_folder(root / "empty", root / "bad")


# ----------------------------------------------------------------------------- sets, tensors


def test_check_finds_corrupt_file(tmp_path):
    good = write_image(tmp_path / "ok.png", 10)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    problems = FileImageSet([good, bad], SIZE).check()
    assert len(problems) == 1 and "bad.png" in problems[0] and "\n" not in problems[0]
    with pytest.raises(OSError, match="bad.png"):
        FileImageSet([bad], SIZE).image(0)
    assert check_images(FileImageSet([good], SIZE)) == []


def test_array_image_set():
    images = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    s = ArrayImageSet(None, images)
    assert len(s) == 2 and s.names == ["index 0", "index 1"] and s.size == (4, 5)
    assert np.array_equal(s.image(1), images[1]) and s.check() == []
    with pytest.raises(ValueError, match="uint8"):
        ArrayImageSet(None, images.astype(np.float32))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        ArrayImageSet(None, images[..., :2])
    with pytest.raises(ValueError, match="3 names for 2 images"):
        ArrayImageSet(["a", "b", "c"], images)


def test_dataset_checks_lengths():
    s = ArrayImageSet(None, np.zeros((2, 4, 4, 1), np.uint8))
    with pytest.raises(ValueError, match="2 test images"):
        ImageDataset("x", s, s, np.zeros(3), None, ["good", "good"])


def test_image_tensors_range_and_flips():
    image = np.zeros((1, 4, 6, 3), np.uint8)
    image[0, 0, 0] = 255  # top-left corner white
    plain = ImageTensors(ArrayImageSet(None, image))
    x = plain[0]
    assert x.shape == (3, 4, 6) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0 and x[:, 0, 0].eq(1).all()
    assert all(torch.equal(plain[0], x) for _ in range(5))
    flipped = ImageTensors(ArrayImageSet(None, image), flips=True)
    torch.manual_seed(0)
    corners = set()
    for _ in range(64):
        y = flipped[0]
        assert sorted(y.flatten().tolist()) == sorted(x.flatten().tolist())
        row, col = divmod(int(y[0].argmax()), 6)
        corners.add((row, col))
    assert corners == {(0, 0), (0, 5), (3, 0), (3, 5)}


# ----------------------------------------------------------------------------- digits


def test_digits_split_is_stratified_and_fixed():
    data = digits_one_class(3, size=(16, 16))
    again = digits_one_class(3, size=(16, 16))
    other = digits_one_class(3, size=(16, 16), seed=1)
    assert data.name == "digits-3" and data.masks is None
    assert data.test.names == again.test.names != other.test.names
    assert np.array_equal(data.test.image(5), again.test.image(5))
    image = data.train.image(0)
    assert image.shape == (16, 16, 1) and image.dtype == np.uint8 and image.max() > 200
    kinds = np.array(data.kinds)
    assert set(kinds) == {str(c) for c in range(10)}
    assert np.array_equal(data.labels, (kinds != "3").astype(np.uint8))
    train_idx = {int(n.split()[1]) for n in data.train.names}
    test_idx = {int(n.split()[1]) for n in data.test.names}
    assert not train_idx & test_idx
    target = np.bincount(np.array([int(k) for k in data.kinds]), minlength=10)
    from sklearn.datasets import load_digits

    all_target = load_digits().target
    assert len(data.test) == 540  # ceil(0.3 * 1797), scikit-learn's rounding
    assert np.allclose(target / np.bincount(all_target), 0.3, atol=0.02)
    assert all(all_target[i] == 3 for i in train_idx)
    assert len(train_idx) == (all_target == 3).sum() - target[3]
    # Another normal class uses the same split.
    seven = digits_one_class(7, size=(16, 16))
    assert seven.test.names == data.test.names and seven.labels.sum() == len(seven.test) - target[7]


def test_digits_arguments():
    with pytest.raises(ValueError, match="--normal-class"):
        digits_one_class(10)
    with pytest.raises(ValueError, match="--normal-class"):
        digits_one_class(-1)
    with pytest.raises(ValueError, match="test_fraction"):
        digits_one_class(0, test_fraction=1.0)


# ----------------------------------------------------------------------------- MNIST, CIFAR


def write_idx(path, array, compress=False):
    data = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def make_mnist(folder, compress=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, labels in (("train", [0, 1, 1, 2, 1]), ("t10k", [1, 0, 2, 1])):
        labels = np.array(labels, np.uint8)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels * 10  # tells the images apart
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_reader(tmp_path, compress):
    make_mnist(tmp_path, compress)
    data = mnist_one_class(tmp_path, 1)
    assert data.name == "mnist-1" and len(data.train) == 3 and len(data.test) == 4
    assert data.train.names == ["index 1", "index 2", "index 4"]
    assert all(data.train.image(i)[0, 0, 0] == 10 for i in range(3))
    assert data.train.image(0).shape == (28, 28, 1)
    assert data.labels.tolist() == [0, 1, 1, 0] and data.kinds == ["1", "0", "2", "1"]
    small = mnist_one_class(tmp_path, 2, size=(14, 14))
    assert small.test.image(0).shape == (14, 14, 1) and small.labels.tolist() == [1, 1, 0, 1]


def test_mnist_errors(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        mnist_one_class(tmp_path, 0)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="4 images but .* 3 labels"):
        mnist_one_class(tmp_path, 0)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03junk")
    with pytest.raises(ValueError, match="not an idx file"):
        mnist_one_class(tmp_path, 0)
    with pytest.raises(ValueError, match="--normal-class"):
        mnist_one_class(tmp_path, 11)


def make_cifar(folder):
    folder.mkdir(parents=True)
    for name, labels in [(f"data_batch_{i}", [i % 10, 3]) for i in range(1, 6)] + \
            [("test_batch", [3, 4, 5])]:
        images = np.zeros((len(labels), 32, 32, 3), np.uint8)
        images[:, 0, 1] = (255, 128, 7)  # one coloured pixel at row 0, column 1
        images[:, 31, 31, 0] = np.array(labels) * 20
        data = images.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f)


def test_cifar_reader(tmp_path):
    make_cifar(tmp_path / "cifar-10-batches-py")
    for path in (tmp_path, tmp_path / "cifar-10-batches-py"):
        data = cifar10_one_class(path, 3)
        assert data.name == "cifar10-3" and len(data.train) == 6 and len(data.test) == 3
        assert data.labels.tolist() == [0, 1, 1] and data.kinds == ["3", "4", "5"]
        image = data.train.image(0)
        assert image.shape == (32, 32, 3)
        assert image[0, 1].tolist() == [255, 128, 7] and image[1, 0].tolist() == [0, 0, 0]
        assert all(data.train.image(i)[31, 31, 0] == 60 for i in range(6))
    gray = cifar10_one_class(tmp_path, 4, size=(8, 8), channels=1)
    assert gray.test.image(0).shape == (8, 8, 1)


def test_cifar_errors(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        cifar10_one_class(tmp_path, 0)
    (folder / "data_batch_4").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_4"):
        cifar10_one_class(tmp_path, 0)
    with open(folder / "data_batch_4", "wb") as f:
        pickle.dump({b"labels": [0], b"data": np.zeros((1, 100), np.uint8)}, f)
    with pytest.raises(ValueError, match=r"data must be uint8 \(N, 3072\)"):
        cifar10_one_class(tmp_path, 0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cifar10_one_class(tmp_path / "nowhere", 0)


# ----------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("channels", [1, 3])
def test_synthetic_defects_masks_are_the_drawn_pixels(channels):
    data = synthetic_defects(num_train=4, num_test_good=3, num_test_defect=6, size=64,
                             channels=channels, seed=5)
    assert len(data.train) == 4 and len(data.test) == 9
    assert data.kinds == ["good"] * 3 + list(DEFECT_KINDS) * 2
    assert data.labels.tolist() == [0] * 3 + [1] * 6
    for i in range(len(data.test)):
        image, mask = data.test.image(i), data.mask(i)
        assert image.shape == (64, 64, channels) and image.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        assert bool(mask.any()) == bool(data.labels[i])
        clean, drawn, sample_mask = _synthetic_sample(5, "test", i, 64, channels, data.kinds[i])
        assert np.array_equal(drawn, image) and np.array_equal(sample_mask, mask)
        changed = (image != clean).any(axis=2)
        # Every changed pixel is under the mask, and almost every masked pixel changed (a
        # flat patch can equal the grain at a few pixels).
        assert not (changed & ~mask.astype(bool)).any()
        assert changed.sum() >= 0.9 * mask.sum()
        if data.labels[i]:
            assert 0.01 <= mask.mean() <= 0.05, (data.kinds[i], mask.mean())
    # Normal images vary a little from one to the next.
    assert not np.array_equal(data.train.image(0), data.train.image(1))


def test_synthetic_defects_are_deterministic_and_sized():
    a, b = synthetic_defects(2, 1, 3, seed=1), synthetic_defects(2, 1, 3, seed=1)
    c = synthetic_defects(2, 1, 3, seed=2)
    for i in range(4):
        assert np.array_equal(a.test.image(i), b.test.image(i))
        assert np.array_equal(a.mask(i), b.mask(i))
    assert not np.array_equal(a.test.image(1), c.test.image(1))
    for seed in range(8):
        data = synthetic_defects(1, 0, 3, size=128, seed=seed)
        for i in range(3):
            assert 0.01 <= data.mask(i).mean() <= 0.05
    with pytest.raises(ValueError, match="channels"):
        synthetic_defects(channels=2)
    with pytest.raises(ValueError, match="size"):
        synthetic_defects(size=8)


def test_synthetic_defects_through_image_tensors():
    data = synthetic_defects(num_train=3, num_test_good=0, num_test_defect=0, size=32)
    batch = torch.stack([ImageTensors(data.train, flips=True)[i] for i in range(3)])
    assert batch.shape == (3, 3, 32, 32) and batch.min() >= -1 and batch.max() <= 1
