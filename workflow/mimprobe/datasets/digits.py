"""`digits`: the offline default, scikit-learn's 1,797 digits rendered as 32x32 colour images."""

from __future__ import annotations

import numpy as np

from .base import Kind, RawDataset, SplitArrays

SIZES = {"train": 1_297, "test": 500}


def render_digit(digit_8x8: np.ndarray, rng: np.random.Generator, side: int = 32) -> np.ndarray:
    """One 8x8 digit (values 0..16) drawn at a random size, position and colour pair on side x side.

    Raw 8x8 digits are so aligned that raw pixels classify them almost perfectly; random
    placement and colours make the demo a test of features rather than of pixel alignment.
    """
    from PIL import Image

    size = int(rng.integers(side // 2, side - 3))
    glyph = Image.fromarray((digit_8x8 / 16.0 * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    alpha = np.zeros((side, side), dtype=np.float32)
    top, left = rng.integers(0, side - size + 1, size=2)
    alpha[top:top + size, left:left + size] = np.asarray(glyph, dtype=np.float32) / 255.0
    while True:
        background, foreground = rng.uniform(0, 255, size=(2, 3))
        if np.abs(background - foreground).mean() > 90:  # keep the digit visible
            break
    image = background * (1 - alpha[..., None]) + foreground * alpha[..., None]
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image.round(), 0, 255).astype(np.uint8)


def load_digits_rgb(test_size: int = SIZES["test"], seed: int = 0) -> RawDataset:
    """sklearn's 1,797 digits rendered as 32x32 RGB uint8 (see render_digit), fixed stratified split.

    The rendering and the split use their own fixed seed, so the dataset is the same for every
    config seed (the config seed drives only the validation split and the probes).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    rng = np.random.default_rng(seed)
    rgb = np.stack([render_digit(image, rng) for image in digits.images])
    train_idx, test_idx = train_test_split(
        np.arange(len(rgb)), test_size=test_size, stratify=digits.target, random_state=seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return RawDataset(
        SplitArrays(rgb[train_idx], digits.target[train_idx].astype(np.int64)),
        SplitArrays(rgb[test_idx], digits.target[test_idx].astype(np.int64)),
        [str(i) for i in range(10)],
    )


DIGITS = Kind(load=lambda entry: load_digits_rgb(), sizes=lambda entry: dict(SIZES), official_sizes=SIZES)
