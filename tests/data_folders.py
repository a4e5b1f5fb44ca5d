"""Small data folders in the layouts the loaders read (UCSD, frames folders, video files,
MVTec-AD, anomalib's Folder layout), written with PIL and PyAV for the tests."""

import numpy as np
from PIL import Image


def flat_frame(value):
    """A 48 x 64 frame of one gray level, or of one RGB colour when value is a triple."""
    return np.full((48, 64) + ((3,) if isinstance(value, tuple) else ()), value, np.uint8)


def write_frames(folder, values, suffix=".jpg", name="{:04d}"):
    folder.mkdir(parents=True)
    for i, v in enumerate(values):
        Image.fromarray(flat_frame(v)).save(folder / (name.format(i) + suffix))


def make_ucsd(root, with_m_file=True):
    write_frames(root / "Train" / "Train001", [10] * 5, ".tif", "{:03d}")
    write_frames(root / "Train" / "Train002", [20] * 4, ".tif", "{:03d}")
    write_frames(root / "Test" / "Test001", [30] * 6, ".tif", "{:03d}")
    write_frames(root / "Test" / "Test002", [40] * 7, ".tif", "{:03d}")
    # Masks for Test001: frames 2 and 3 (0-based) anomalous.
    write_frames(root / "Test" / "Test001_gt", [0, 0, 255, 1, 0, 0], ".bmp", "{:03d}")
    (root / "Train" / ".DS_Store").write_text("")
    if with_m_file:
        (root / "Test" / "UCSDped2.m").write_text(
            "TestVideoFile = {};\n"
            "TestVideoFile{end+1}.gt_frame = [3:4];\n"
            "TestVideoFile{end+1}.gt_frame = [1:2, 6:7];\n")


def make_frames_folder(root, labels_shape=(1, -1)):
    write_frames(root / "training" / "frames" / "01", [10] * 5)
    write_frames(root / "training" / "frames" / "02", [20] * 6)
    write_frames(root / "testing" / "frames" / "01", [30] * 4)
    # Unpadded names: natural order puts 2.jpg before 10.jpg.
    write_frames(root / "testing" / "frames" / "02", list(range(0, 120, 10)), name="{:d}")
    labels = np.array([0, 1, 1, 0] + [0] * 6 + [1] * 6, np.uint8).reshape(labels_shape)
    np.save(root / "frame_labels_toy.npy", labels)


def write_video(path, values):
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for v in values:
            rgb = np.broadcast_to(flat_frame(v)[..., None] if np.ndim(v) == 0 else flat_frame(v),
                                  (48, 64, 3))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_image(path, value, shape=(24, 32), mode="RGB"):
    """A flat image: `value` is a gray level or an RGB triple."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    array = np.empty((*shape, channels), np.uint8)
    array[...] = value
    Image.fromarray(array if channels == 3 else array[:, :, 0]).save(path)
    return path


def write_mask(path, box, shape=(24, 32)):
    """A mask with 255 inside box = (top, left, bottom, right)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(shape, np.uint8)
    mask[box[0]:box[2], box[1]:box[3]] = 255
    Image.fromarray(mask).save(path)
    return path


def make_mvtec(root):
    """root/bottle: train/good 3 images (unpadded names), test/good 2, test/crack 2,
    test/broken 1, masks for every defect image."""
    cat = root / "bottle"
    for i in (1, 2, 10):
        write_image(cat / "train" / "good" / f"{i}.png", (10 * i, 0, 0))
    for i in (0, 1):
        write_image(cat / "test" / "good" / f"{i:03d}.png", 50)
    for i in (2, 10):
        write_image(cat / "test" / "crack" / f"{i}.png", 100 + i)
        write_mask(cat / "ground_truth" / "crack" / f"{i}_mask.png", (0, 0, 12, 16))
    write_image(cat / "test" / "broken" / "000.png", 200)
    write_mask(cat / "ground_truth" / "broken" / "000_mask.png", (12, 16, 24, 32))
    (cat / "train" / "good" / ".DS_Store").write_text("")
    return cat


def make_folder(root, mask_names=("a_mask", "b", "c10_mask")):
    for i, v in enumerate((10, 20, 30)):
        write_image(root / "good" / f"n{i}.png", v, mode="L")
    write_image(root / "good_test" / "t1.png", 40, mode="L")
    for name, v in zip(("a", "b", "c10"), (100, 110, 120)):
        write_image(root / "bad" / f"{name}.png", v, mode="L")
    for name in mask_names:
        write_mask(root / "masks" / f"{name}.png", (0, 0, 24, 16))
    return root
