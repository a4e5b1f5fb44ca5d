"""Image data sets for one-class anomaly detection: image lists (files read on demand, or
arrays in memory), a data set of normal training and labelled test images with optional
pixel masks, and loaders for the MVTec-AD and generic-folder layouts, scikit-learn's digits,
MNIST, CIFAR-10 and an embedded synthetic texture set with drawn defects.

Images are kept as uint8 (H, W, C) with C = 1 (grayscale) or 3 (RGB) at the requested size;
the tensors handed to models are float32 (C, H, W) in [-1, 1].
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from memae_fused.anomaly.data.folders import IMAGE_SUFFIXES
from memae_fused.anomaly.data.video import Size, natural_key

PathLike = Union[str, Path]
MaskEntry = Optional[Union[Path, np.ndarray]]

DEFECT_KINDS = ("scratch", "spot", "missing")

MVTEC_LAYOUT = ("expected the MVTec-AD layout ROOT/<category>/train/good/*.png, "
                "ROOT/<category>/test/{good,<defect>}/*.png, "
                "ROOT/<category>/ground_truth/<defect>/<stem>_mask.png")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


# ----------------------------------------------------------------------------- checks


def _check_size(size: Sequence[int], arg: str = "size") -> Size:
    """size as a (height, width) tuple of positive ints."""
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"{arg} must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"{arg} must be positive (height, width), got {size!r}")
    return height, width


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return channels


def _check_class(normal_class: int) -> int:
    if isinstance(normal_class, bool) or normal_class not in range(10):
        raise ValueError(f"--normal-class must be a class 0..9, got {normal_class!r}")
    return int(normal_class)


# ----------------------------------------------------------------------------- pixels


def _pil_to_array(image, size: Size, channels: int) -> np.ndarray:
    """A PIL image converted to "L"/"RGB" and resized (bilinear) to uint8 (H, W, channels)."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _resize_arrays(images: np.ndarray, size: Size, channels: int) -> np.ndarray:
    """uint8 (N, H, W, C) converted and resized like image files; a no-op when they match."""
    from PIL import Image

    if images.shape[1:] == (*size, channels):
        return images
    out = np.empty((len(images), *size, channels), np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        out[i] = _pil_to_array(pil, size, channels)
    return out


def _binary_mask(mask: np.ndarray, size: Size) -> np.ndarray:
    """Any array mask as uint8 (H, W) in {0, 1} at `size` (nearest-neighbour resize)."""
    from PIL import Image

    binary = (np.asarray(mask) > 0)
    if binary.ndim == 3:
        binary = binary.any(axis=2)
    if binary.shape != tuple(size):
        pil = Image.fromarray(binary.astype(np.uint8) * 255)
        binary = np.asarray(pil.resize((size[1], size[0]), Image.NEAREST)) > 0
    return binary.astype(np.uint8)


def _read_mask(path: Path, size: Size) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return _binary_mask(np.asarray(image.convert("L")), size)
    except OSError as exc:
        raise OSError(f"cannot read mask {path}: {exc}") from exc


# ----------------------------------------------------------------------------- image sets


@dataclass(eq=False)
class ImageSet:
    """A list of images, each read as uint8 (H, W, channels) at one size. names: the file
    stem of every image (or "index N" for in-memory sets), for reports."""

    names: List[str]

    size: Size = (0, 0)
    channels: int = 0

    def __len__(self) -> int:
        return len(self.names)

    def image(self, i: int) -> np.ndarray:
        """uint8 (H, W, channels) of image i."""
        raise NotImplementedError

    def check(self) -> List[str]:
        """Problems a cheap look finds (unreadable files), one line each."""
        return []


class FileImageSet(ImageSet):
    """Images stored as files, read, converted and resized on demand."""

    def __init__(self, paths: Sequence[PathLike], size: Size = (256, 256), channels: int = 3):
        self.paths = [Path(p) for p in paths]
        self.names = [p.stem for p in self.paths]
        self.size, self.channels = _check_size(size), _check_channels(channels)

    def __repr__(self) -> str:
        return f"FileImageSet({len(self)} files, size={self.size}, channels={self.channels})"

    def image(self, i: int) -> np.ndarray:
        from PIL import Image

        path = self.paths[i]
        try:
            with Image.open(path) as image:
                return _pil_to_array(image, self.size, self.channels)
        except OSError as exc:
            raise OSError(f"cannot read image {path}: {exc}") from exc

    def check(self) -> List[str]:
        """Opens every file's header (PIL's verify, no decoding)."""
        from PIL import Image

        problems = []
        for path in self.paths:
            try:
                with Image.open(path) as image:
                    image.verify()
            except Exception as exc:  # PIL raises many types for a bad file
                problems.append(f"{path}: {type(exc).__name__}: {exc}")
        return problems


class ArrayImageSet(ImageSet):
    """Images held in memory as uint8 (N, H, W, C), C = 1 or 3; names default to "index N"."""

    def __init__(self, names: Optional[Sequence[str]], images: np.ndarray):
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[3] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, H, W, C) with C = 1 or 3, "
                             f"got {images.dtype} {images.shape}")
        names = [f"index {i}" for i in range(len(images))] if names is None else list(names)
        if len(names) != len(images):
            raise ValueError(f"{len(names)} names for {len(images)} images")
        self.names, self._images = names, images
        self.size, self.channels = (images.shape[1], images.shape[2]), images.shape[3]

    def __repr__(self) -> str:
        return f"ArrayImageSet({len(self)} images, size={self.size}, channels={self.channels})"

    def image(self, i: int) -> np.ndarray:
        return self._images[i]


def check_images(images: ImageSet) -> List[str]:
    """Every problem ImageSet.check finds in these images."""
    return images.check()


# ----------------------------------------------------------------------------- data set


@dataclass
class ImageDataset:
    """Training images (all normal) and test images with labels (1 = anomalous) and the kind
    of every test image (its defect type, "good" for normal, or its class). masks: per test
    image a mask file, an array or None (all zeros); None for a set without pixel masks."""

    name: str
    train: ImageSet
    test: ImageSet
    labels: np.ndarray
    masks: Optional[List[MaskEntry]]
    kinds: List[str]

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.uint8).reshape(-1)
        n = len(self.test)
        if len(self.labels) != n or len(self.kinds) != n:
            raise ValueError(f"{n} test images but {len(self.labels)} labels and "
                             f"{len(self.kinds)} kinds")
        if self.masks is not None and len(self.masks) != n:
            raise ValueError(f"{n} test images but {len(self.masks)} masks")

    def mask(self, i: int) -> Optional[np.ndarray]:
        """uint8 (H, W) in {0, 1} of test image i at the test images' size (zeros where the
        image has no mask), or None when the set has no pixel masks at all."""
        if self.masks is None:
            return None
        entry = self.masks[i]
        if entry is None:
            return np.zeros(self.test.size, np.uint8)
        if isinstance(entry, np.ndarray):
            return _binary_mask(entry, self.test.size)
        return _read_mask(Path(entry), self.test.size)


class ImageTensors(torch.utils.data.Dataset):
    """An ImageSet as float32 (C, H, W) tensors in [-1, 1]. flips: random horizontal and
    vertical flips (each with probability 1/2, DAAD's augmentation), for training only."""

    def __init__(self, images: ImageSet, flips: bool = False):
        self.images, self.flips = images, flips

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = image_to_tensor(self.images.image(i))
        if self.flips:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            if torch.rand(()) < 0.5:
                x = x.flip(-2)
        return x


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) in [-1, 1]."""
    x = torch.tensor(image).permute(2, 0, 1)  # a copy: in-memory sets hand out read-only views
    return x.float().div_(127.5).sub_(1.0)


# ----------------------------------------------------------------------------- folders


def _image_files(folder: Path) -> List[Path]:
    """The image files of a folder (not hidden), in natural order."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.is_file() and not p.name.startswith(".")), key=natural_key)


def _nonempty_images(folder: Path, what: str, layout: str) -> List[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {folder} is not a folder; {layout}")
    paths = _image_files(folder)
    if not paths:
        raise FileNotFoundError(f"{what} {folder} holds no images "
                                f"({', '.join(sorted(IMAGE_SUFFIXES))}); {layout}")
    return paths


def load_mvtec(root: PathLike, category: Optional[str] = None, size: Size = (256, 256),
               channels: int = 3) -> ImageDataset:
    """One MVTec-AD category: root/<category>/train/good/ trains; root/<category>/test/good/
    (label 0) and test/<defect>/ (label 1, kind = defect) test, with pixel masks
    ground_truth/<defect>/<stem>_mask.png. category=None: root is the category folder."""
    size, channels = _check_size(size), _check_channels(channels)
    root = Path(root)
    folder = root if category is None else root / category
    if not folder.is_dir():
        raise FileNotFoundError(f"MVTec-AD category folder {folder} does not exist; {MVTEC_LAYOUT}")
    if category is None and not ((folder / "train").is_dir() and (folder / "test").is_dir()):
        raise FileNotFoundError(f"{folder} has no train/ and test/: pass a category or the "
                                f"category folder itself; {MVTEC_LAYOUT}")
    train = _nonempty_images(folder / "train" / "good", "training folder", MVTEC_LAYOUT)
    test_root, gt_root = folder / "test", folder / "ground_truth"
    if not test_root.is_dir():
        raise FileNotFoundError(f"test folder {test_root} is not a folder; {MVTEC_LAYOUT}")
    kinds_dirs = sorted((d for d in test_root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: (d.name != "good", natural_key(d)))
    if not kinds_dirs:
        raise FileNotFoundError(f"{test_root} holds no good/ or <defect>/ folders; {MVTEC_LAYOUT}")
    paths: List[Path] = []
    kinds: List[str] = []
    masks: List[MaskEntry] = []
    for kind_dir in kinds_dirs:
        images = _nonempty_images(kind_dir, "test folder", MVTEC_LAYOUT)
        kind = kind_dir.name
        found = _mask_files(gt_root / kind) if kind != "good" else {}
        for path in images:
            if kind == "good":
                masks.append(None)
                continue
            expected = gt_root / kind / f"{path.stem}_mask.png"
            mask = found.pop(f"{path.stem}_mask", None)
            if mask is None:
                raise FileNotFoundError(f"anomalous image {path} has no mask: expected {expected}")
            masks.append(mask)
        if found:
            orphan = next(iter(found.values()))
            raise ValueError(f"mask {orphan} matches no image in {kind_dir}: masks must be named "
                             f"<image stem>_mask.png")
        paths += images
        kinds += [kind] * len(images)
    tested = {d.name for d in kinds_dirs}
    if gt_root.is_dir():
        for gt_dir in sorted(gt_root.iterdir(), key=natural_key):
            orphans = list(_mask_files(gt_dir).values()) if gt_dir.is_dir() else []
            if orphans and gt_dir.name not in tested and gt_dir.name != "good":
                raise ValueError(f"mask {orphans[0]} matches no image: there is no test folder "
                                 f"{test_root / gt_dir.name}")
    labels = np.array([k != "good" for k in kinds], np.uint8)
    return ImageDataset(folder.name, FileImageSet(train, size, channels),
                        FileImageSet(paths, size, channels), labels, masks, kinds)


def _mask_files(folder: Path) -> Dict[str, Path]:
    """stem -> path of the image files in a folder ({} if it does not exist)."""
    return {p.stem: p for p in _image_files(folder)} if folder.is_dir() else {}


def load_image_folder(normal_dir: PathLike, abnormal_dir: PathLike,
                      normal_test_dir: Optional[PathLike] = None,
                      mask_dir: Optional[PathLike] = None, size: Size = (256, 256),
                      channels: int = 3, name: Optional[str] = None) -> ImageDataset:
    """anomalib's generic Folder layout: every image of normal_dir trains; the test set is
    normal_test_dir's images (label 0, kind "good"; none if not given) then abnormal_dir's
    (label 1, kind "abnormal"). mask_dir: one mask per abnormal image, paired by sorted order
    and stem (<stem>.png or <stem>_mask.png). name defaults to normal_dir's parent's name."""
    size, channels = _check_size(size), _check_channels(channels)
    layout = ("expected NORMAL_DIR/*.png (training), ABNORMAL_DIR/*.png, optional "
              "NORMAL_TEST_DIR/*.png and MASK_DIR/<abnormal stem>[_mask].png")
    normal_dir, abnormal_dir = Path(normal_dir), Path(abnormal_dir)
    train = _nonempty_images(normal_dir, "normal_dir", layout)
    abnormal = _nonempty_images(abnormal_dir, "abnormal_dir", layout)
    normal_test = ([] if normal_test_dir is None else
                   _nonempty_images(Path(normal_test_dir), "normal_test_dir", layout))
    masks: Optional[List[MaskEntry]] = None
    if mask_dir is not None:
        mask_paths = _nonempty_images(Path(mask_dir), "mask_dir", layout)
        masks = [None] * len(normal_test) + _pair_masks(abnormal, mask_paths)
    kinds = ["good"] * len(normal_test) + ["abnormal"] * len(abnormal)
    labels = np.array([0] * len(normal_test) + [1] * len(abnormal), np.uint8)
    if name is None:
        name = normal_dir.resolve().parent.name or normal_dir.name
    return ImageDataset(name, FileImageSet(train, size, channels),
                        FileImageSet(normal_test + abnormal, size, channels), labels, masks, kinds)


def _pair_masks(images: List[Path], masks: List[Path]) -> List[MaskEntry]:
    """masks[i] for images[i], checking that every mask's stem is the image's (+ "_mask")."""
    for image, mask in zip(images, masks):
        if mask.stem not in (image.stem, f"{image.stem}_mask"):
            raise ValueError(f"mask {mask} does not match abnormal image {image} (in sorted "
                             f"order): expected {image.stem}_mask or {image.stem} as its stem")
    if len(masks) > len(images):
        raise ValueError(f"mask {masks[len(images)]} matches no abnormal image: {len(masks)} "
                         f"masks for {len(images)} abnormal images")
    if len(images) > len(masks):
        raise ValueError(f"abnormal image {images[len(masks)]} has no mask: {len(masks)} masks "
                         f"for {len(images)} abnormal images")
    return list(masks)


# ----------------------------------------------------------------------------- class sets


def _one_class(name: str, normal_class: int, train_images: np.ndarray, train_labels: np.ndarray,
               test_images: np.ndarray, test_labels: np.ndarray, size: Size, channels: int,
               train_index: Optional[np.ndarray] = None,
               test_index: Optional[np.ndarray] = None) -> ImageDataset:
    """The one-class protocol: train = the normal class's training images, test = every test
    image, label 1 for the other classes; kinds = the class as a string. *_index: the
    images' indices in their source (for names), default their position."""
    keep = np.flatnonzero(train_labels == normal_class)
    train_index = np.arange(len(train_images)) if train_index is None else train_index
    test_index = np.arange(len(test_images)) if test_index is None else test_index
    train = ArrayImageSet([f"index {i}" for i in train_index[keep]],
                          _resize_arrays(train_images[keep], size, channels))
    test = ArrayImageSet([f"index {i}" for i in test_index],
                         _resize_arrays(test_images, size, channels))
    labels = (test_labels != normal_class).astype(np.uint8)
    return ImageDataset(name, train, test, labels, None, [str(int(c)) for c in test_labels])


def digits_one_class(normal_class: int, size: Size = (32, 32), seed: int = 0,
                     test_fraction: float = 0.3, channels: int = 1) -> ImageDataset:
    """scikit-learn's bundled digits (1797 8x8 images, values 0..16) upsampled (bilinear) to
    uint8 0..255 at `size`, split once into train/test (stratified by class, random_state =
    seed), then the one-class protocol with `normal_class` as normal."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    normal_class = _check_class(normal_class)
    size, channels = _check_size(size), _check_channels(channels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    digits = load_digits()
    target = digits.target.astype(np.int64)
    scaled = digits.images.astype(np.float32) * (255.0 / 16.0)
    images = np.empty((len(scaled), *size), np.uint8)
    for i, image in enumerate(scaled):
        big = Image.fromarray(image, mode="F").resize((size[1], size[0]), Image.BILINEAR)
        images[i] = np.clip(np.rint(np.asarray(big)), 0, 255).astype(np.uint8)
    images = images[:, :, :, None]
    train_idx, test_idx = train_test_split(np.arange(len(target)), test_size=test_fraction,
                                           stratify=target, random_state=seed)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return _one_class(f"digits-{normal_class}", normal_class, images[train_idx],
                      target[train_idx], images[test_idx], target[test_idx], size, channels,
                      train_idx, test_idx)


def _find_file(folder: Path, name: str, what: str) -> Path:
    """folder/name or folder/name.gz."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{what} file {folder / name} (or {name}.gz) not found")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file (MNIST's format: magic 0 0 8 ndim, big-endian uint32 dims, uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read idx file {path}: {exc}") from None
    header = 4 + 4 * ndim
    if len(data) < header or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise ValueError(f"{path} is not an idx file of {ndim}-d uint8 data "
                         f"(expected magic 0x0000080{ndim})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} values but holds {len(data) - header} bytes")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _read_split(images_path: Path, labels_path: Path) -> Tuple[np.ndarray, np.ndarray]:
    images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has "
                         f"{len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path} holds labels outside 0..9")
    return images[:, :, :, None], labels.astype(np.int64)


def mnist_one_class(path: PathLike, normal_class: int, size: Size = (28, 28),
                    channels: int = 1) -> ImageDataset:
    """MNIST from its four idx files (optionally .gz) in `path` (or torchvision's
    path/MNIST/raw): the one-class protocol with `normal_class` as normal."""
    normal_class = _check_class(normal_class)
    size, channels = _check_size(size), _check_channels(channels)
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"MNIST folder {folder} does not exist; expected the idx files "
                                f"{', '.join(MNIST_FILES)}")
    if not any((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in MNIST_FILES) \
            and (folder / "MNIST" / "raw").is_dir():
        folder = folder / "MNIST" / "raw"
    files = [_find_file(folder, f, "MNIST") for f in MNIST_FILES]
    train_images, train_labels = _read_split(files[0], files[1])
    test_images, test_labels = _read_split(files[2], files[3])
    return _one_class(f"mnist-{normal_class}", normal_class, train_images, train_labels,
                      test_images, test_labels, size, channels)


def _read_cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: a pickled dict with data uint8 (N, 3072; the R, G, B planes
    of a 32x32 image) and labels (N,). Pickle runs code: load only trusted files."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as exc:  # pickle raises many types for a bad file
        raise ValueError(f"cannot unpickle CIFAR-10 batch {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR-10 batch (a pickled dict with data and labels)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 batch: it has no data and labels entries")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: data must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"{path}: labels must be {len(data)} classes in 0..9")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def cifar10_one_class(path: PathLike, normal_class: int, size: Size = (32, 32),
                      channels: int = 3) -> ImageDataset:
    """CIFAR-10 from its python batches (cifar-10-batches-py/data_batch_1..5, test_batch;
    `path` is that folder or its parent): the one-class protocol with `normal_class` as
    normal."""
    normal_class = _check_class(normal_class)
    size, channels = _check_size(size), _check_channels(channels)
    folder = Path(path)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder {folder} does not exist; expected "
                                f"cifar-10-batches-py/ with {', '.join(CIFAR_FILES)}")
    for name in CIFAR_FILES:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"CIFAR-10 batch {folder / name} not found; expected "
                                    f"cifar-10-batches-py/ with {', '.join(CIFAR_FILES)}")
    batches = [_read_cifar_batch(folder / name) for name in CIFAR_FILES]
    train_images = np.concatenate([b[0] for b in batches[:-1]])
    train_labels = np.concatenate([b[1] for b in batches[:-1]])
    test_images, test_labels = batches[-1]
    return _one_class(f"cifar10-{normal_class}", normal_class, train_images, train_labels,
                      test_images, test_labels, size, channels)


# ----------------------------------------------------------------------------- synthetic

_TEXTURE_RANGE = (80, 200)  # gray levels of the clean texture
# How a defect changes the texture under its mask, each within the texture's own range of
# colours, so that telling it apart takes a model of the grain, not a colour threshold:
# a scratch darkens it by a third, a spot shifts its hue, a missing patch is the grain
# replaced by the image's mean colour.
_SPOT_SHIFT = np.array([0.8, 1.0, 1.25], np.float32)
_TINT = np.array([1.0, 0.78, 0.55], np.float32)  # wood-like brown from the gray level


def _texture(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """Wood grain: warped diagonal stripes with a random phase, slightly jittered angle and
    period and faint noise, as uint8 (size, size, channels)."""
    coords = np.arange(size, dtype=np.float32)
    ys, xs = coords[:, None], coords[None, :]
    angle = 0.4 + rng.uniform(-0.05, 0.05)
    period = size / 6.0 * rng.uniform(0.97, 1.03)
    warp = 0.8 * np.sin(2 * np.pi * ys / (0.7 * size) + rng.uniform(0, 2 * np.pi))
    u = xs * np.cos(angle) + ys * np.sin(angle)
    stripes = np.sin(2 * np.pi * u / period + warp + rng.uniform(0, 2 * np.pi))
    gray = 140.0 + 45.0 * stripes + rng.normal(0.0, 2.0, (size, size))
    gray = np.clip(gray, *_TEXTURE_RANGE)
    if channels == 1:
        return np.rint(gray)[:, :, None].astype(np.uint8)
    return np.rint(gray[:, :, None] * _TINT).astype(np.uint8)


def _defect_mask(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """The pixels a defect covers (bool (size, size), 1-5% of the image): a thin straight
    scratch, a round irregular spot, or a rectangular missing patch."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = coords[:, None], coords[None, :]
    if kind == "scratch":
        length, half_width = rng.uniform(0.35, 0.55) * size, max(1.0, 0.016 * size)
        angle = rng.uniform(0, np.pi)
        reach = length / 2 + half_width + 1
        cy, cx = rng.uniform(reach, size - reach, 2)
        dy, dx = np.sin(angle), np.cos(angle)
        along = np.clip((ys - cy) * dy + (xs - cx) * dx, -length / 2, length / 2)
        dist = np.hypot(ys - (cy + along * dy), xs - (cx + along * dx))
        return dist <= half_width
    if kind == "spot":
        radius = rng.uniform(0.065, 0.1) * size
        reach = radius * 1.2 + 1
        cy, cx = rng.uniform(reach, size - reach, 2)
        theta = np.arctan2(ys - cy, xs - cx)
        edge = radius * (1 + 0.15 * np.sin(3 * theta + rng.uniform(0, 2 * np.pi)))
        return np.hypot(ys - cy, xs - cx) <= edge
    if kind == "missing":
        h, w = (int(round(f * size)) for f in rng.uniform(0.12, 0.2, 2))
        top, left = rng.integers(1, size - h), rng.integers(1, size - w)
        mask = np.zeros((size, size), bool)
        mask[top:top + h, left:left + w] = True
        return mask
    raise ValueError(f"defect kind must be one of {', '.join(DEFECT_KINDS)}, got {kind!r}")


def _synthetic_sample(seed: int, split: str, index: int, size: int, channels: int,
                      kind: str = "good") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image `index` of a split ("train" or "test") of the synthetic set: (clean texture,
    image, mask), the image being the texture with the defect `kind` drawn in (the mask's
    pixels set to the defect's colour); kind "good" draws none (zero mask)."""
    rng = np.random.default_rng([seed, ("train", "test").index(split), index])
    clean = _texture(rng, size, channels)
    if kind == "good":
        return clean, clean.copy(), np.zeros((size, size), np.uint8)
    mask = _defect_mask(rng, kind, size)
    pixels = clean[mask].astype(np.float32)
    if kind == "scratch":
        changed = pixels * 0.65
    elif kind == "spot":
        changed = pixels * (_SPOT_SHIFT if channels == 3 else 1.3)
    else:
        changed = np.broadcast_to(clean.reshape(-1, channels).mean(axis=0), pixels.shape)
    image = clean.copy()
    image[mask] = np.clip(np.rint(changed), 0, 255).astype(np.uint8)
    return clean, image, mask.astype(np.uint8)


def synthetic_defects(num_train: int = 40, num_test_good: int = 10, num_test_defect: int = 20,
                      size: int = 64, channels: int = 3, seed: int = 0) -> ImageDataset:
    """An embedded MVTec-like set: a wood-grain texture with small random variation (normal)
    and test images with one drawn defect each, cycling through DEFECT_KINDS (a darker
    scratch, a spot of shifted hue, a patch of the image's flat mean colour), with their
    exact masks.
    Test order: the normal images, then the defects. Deterministic given the seed."""
    channels = _check_channels(channels)
    if size < 16:
        raise ValueError(f"size must be >= 16 for visible defects, got {size}")
    if num_train < 1 or num_test_good < 0 or num_test_defect < 0:
        raise ValueError(f"num_train must be >= 1 and the test counts >= 0, got {num_train}, "
                         f"{num_test_good}, {num_test_defect}")
    train = np.stack([_synthetic_sample(seed, "train", i, size, channels)[1]
                      for i in range(num_train)])
    kinds = ["good"] * num_test_good + [DEFECT_KINDS[j % len(DEFECT_KINDS)]
                                        for j in range(num_test_defect)]
    images, masks = [], []
    for i, kind in enumerate(kinds):
        _, image, mask = _synthetic_sample(seed, "test", i, size, channels, kind)
        images.append(image)
        masks.append(mask if kind != "good" else None)
    test = (np.stack(images) if images else np.zeros((0, size, size, channels), np.uint8))
    labels = np.array([k != "good" for k in kinds], np.uint8)
    return ImageDataset("synthetic-defects", ArrayImageSet(None, train), ArrayImageSet(None, test),
                        labels, masks, kinds)
