"""Bring your own images: `root/{train,test}/<class>/<image>` of any size and mode -> RawDataset.

Problems (a test class missing from train, an empty class, an unreadable or oversized image, a link
leading outside the root) are collected and reported together, by name, so one run of `snakemake -n`
lists everything to fix. Images keep their values: EXIF orientation applied, 16-bit and float pixels
scaled to 8 bits rather than clipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import Kind, RawDataset, SplitArrays

SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# Decompression-bomb guard: a small file can claim billions of pixels. 50 MP covers any photo.
MAX_PIXELS = 50_000_000
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _pil():
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL itself refuses images over twice this
    return Image


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS):
    """Open and decode one image as RGB, or raise DataError saying what is wrong and what to do."""
    Image = _pil()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file. Check the path.")
    try:
        image = Image.open(path)
        width, height = image.size
    except Image.DecompressionBombError:
        raise DataError(f"{path}: claims more than {2 * max_pixels:,} pixels (decompression-bomb guard). "
                        "Downscale it before use.") from None
    except Exception as err:
        raise DataError(f"{path}: not an image PIL can read ({type(err).__name__}). "
                        "Pass a PNG, JPEG or other common image file.") from None
    if width * height > max_pixels:
        raise DataError(f"{path}: {width}x{height} = {width * height:,} pixels is over the safety cap of "
                        f"{max_pixels:,} (decompression-bomb guard). Downscale it before use.")
    try:
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image)  # as a viewer shows it, before any conversion
        return _as_rgb(image, path)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: the image data cannot be decoded ({err}). Replace or remove the file.") from None


def _as_rgb(image, path: Path):
    """RGB with 8 bits per channel, scaling wider samples rather than clipping them.

    PIL's own conversion clips 16-bit and float greyscale at 255 (a 16-bit scan turns white, a float
    image in [0, 1] turns black and white). 16-bit RGB(A) files already open as 8-bit RGB(A):
    PIL keeps the high byte of each sample, within one level of the scaled value.
    """
    Image = _pil()
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image)
        if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(f"{path}: 32-bit integer pixels from {values.min()} to {values.max()} have no known "
                            "range; only 0..65535 (16-bit) is read. Save it as an 8- or 16-bit image.")
        # round(v * 255 / 65535) in integers: 16 bits, full range, to 8 bits
        grey = (values.astype(np.uint32) * 510 + 65535) // 131070
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        values = np.asarray(image)
        if values.size and not np.isfinite(values).all():
            raise DataError(f"{path}: floating-point pixels include NaN or infinity. "
                            "Replace them, or save it as 8-bit.")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise DataError(f"{path}: floating-point pixels from {values.min():g} to {values.max():g}; only [0, 1] "
                            "has a known meaning. Rescale it to [0, 1], or save it as 8-bit.")
        return Image.fromarray(np.rint(values * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def to_square_uint8(image, size: int) -> np.ndarray:
    """Resize the shorter side to `size`, centre-crop to size x size: (size, size, 3) uint8.

    Used both when sharding an image folder and by `mimprobe predict`, so a predicted image is
    prepared exactly like the training images.
    """
    Image = _pil()
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(split_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(split_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _outside(path: Path, real_root: Path) -> bool:
    return not path.resolve().is_relative_to(real_root)


def list_image_folder(root: str | Path, allow_outside_links: bool = False
                      ) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names (sorted train folders) and (file, label) pairs per split; structural problems raise.

    A link (class folder or image) that leads outside the root is refused unless allowed: the
    dataset would silently read files its folder does not hold.
    """
    root = Path(root)
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise DataError(f"image folder {root}: no {' or '.join(m + '/' for m in missing)} sub-folder. "
                        "Lay it out as root/train/<class>/<image> and root/test/<class>/<image> "
                        "(config key datasets.<name>.root).")
    real_root = root.resolve()
    folders = {split: _class_folders(root / split) for split in SPLITS}
    class_names = sorted(folders["train"])
    problems = [f"class {name!r} is in test/ but not in train/" for name in sorted(folders["test"])
                if name not in folders["train"]]
    files, escaping = {}, []
    for split in SPLITS:
        files[split] = []
        split_outside = not allow_outside_links and _outside(root / split, real_root)
        if split_outside:
            escaping.append(f"{split}/")
        check_links = not (allow_outside_links or split_outside)
        for name, folder in folders[split].items():
            if check_links and _outside(folder, real_root):
                escaping.append(f"{split}/{name}/")
                continue
            images = _image_files(folder)
            if check_links:  # inside a folder within the root, only a link can lead out
                escaping += [f"{split}/{name}/{p.name}" for p in images if p.is_symlink() and _outside(p, real_root)]
            if not images:
                problems.append(f"{split}/{name}/ holds no images")
            if name in class_names:
                files[split] += [(path, class_names.index(name)) for path in images]
    if not class_names:
        problems.append("train/ has no class sub-folders")
    if escaping:
        shown = ", ".join(escaping[:20]) + (f" and {len(escaping) - 20} more" if len(escaping) > 20 else "")
        problems.append(f"{len(escaping)} link(s) lead outside the root: {shown} (move the files in, or set "
                        "datasets.<name>.allow_outside_links: true to read them)")
    if problems:
        raise DataError(f"image folder {root}: {'; '.join(problems)}. Fix these, then rerun.")
    return class_names, files


def count_images(root: str | Path, allow_outside_links: bool = False) -> dict[str, int]:
    _, files = list_image_folder(root, allow_outside_links)
    return {split: len(files[split]) for split in SPLITS}


def check_image_folder(root: str | Path, allow_outside_links: bool = False) -> dict[str, int]:
    """Every structural problem and every unreadable or oversized image, reported together by name.

    Reads only the image headers (cheap), so it can run when the DAG is built, before any job.
    """
    Image = _pil()
    root = Path(root)
    _, files = list_image_folder(root, allow_outside_links)
    bad = []
    for split in SPLITS:
        for path, _ in files[split]:
            try:
                with Image.open(path) as image:
                    width, height = image.size
                if width * height > MAX_PIXELS:
                    bad.append(f"{path.relative_to(root)} ({width}x{height} is over the {MAX_PIXELS:,}-pixel cap)")
            except Exception as err:
                bad.append(f"{path.relative_to(root)} ({type(err).__name__})")
    if bad:
        shown = "; ".join(bad[:20]) + (f"; and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise DataError(f"image folder {root}: {len(bad)} unreadable image(s): {shown}. "
                        "Replace or remove them, then rerun.")
    return {split: len(files[split]) for split in SPLITS}


def read_image_folder(root: str | Path, image_size: int, allow_outside_links: bool = False) -> RawDataset:
    """Decode every image to RGB, resize/crop to image_size: uint8 NHWC arrays per split."""
    from tqdm import tqdm

    class_names, files = list_image_folder(root, allow_outside_links)
    splits, bad = {}, []
    for split in SPLITS:
        images = np.zeros((len(files[split]), image_size, image_size, 3), dtype=np.uint8)
        labels = np.array([label for _, label in files[split]], dtype=np.int64)
        progress = tqdm(files[split], desc=f"{split} images", unit="img", file=sys.stderr, mininterval=5,
                        ascii=True)
        for i, (path, _) in enumerate(progress):
            try:
                images[i] = to_square_uint8(open_image(path), image_size)
            except DataError as err:
                bad.append(str(err))
        splits[split] = SplitArrays(images, labels)
    if bad:
        raise DataError(f"image folder {root}: {len(bad)} unreadable image(s): {'; '.join(bad[:10])}")
    return RawDataset(splits["train"], splits["test"], class_names)


def _listing(entry: dict) -> dict[str, list]:
    """Per split, each image as (path under the root, size, modification time)."""
    root = Path(entry["root"])
    _, files = list_image_folder(root, entry["allow_outside_links"])
    return {split: [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p, _ in pairs]
            for split, pairs in files.items()}


SCHEMA = {
    "root": {"type": ["string", "null"], "default": None, "x-needed": True,
             "description": "For kind imagefolder, the folder holding train/<class>/* and test/<class>/*."},
    "image_size": {"type": "integer", "minimum": 8, "default": 32,
                   "description": "For kind imagefolder, the side images are resized to when sharding."},
    "allow_outside_links": {"type": "boolean", "default": False,
                            "description": "For kind imagefolder, read class folders and images that are symbolic "
                                           "links leading outside root (refused by default)."},
}

IMAGEFOLDER = Kind(
    load=lambda entry: read_image_folder(entry["root"], entry["image_size"], entry["allow_outside_links"]),
    sizes=lambda entry: count_images(entry["root"], entry["allow_outside_links"]),
    identity=lambda entry: str(Path(entry["root"]).resolve()),
    items=_listing,
    schema=SCHEMA,
    image_side=lambda entry: entry["image_size"],
)
