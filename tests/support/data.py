"""Datasets the tests make, each built so that the right answer is known, and the shared real ones."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DATA_ENV = "TRANSFERLAB_DATA_DIR"


def real_dataset(name: str) -> Path:
    """The shared real dataset; CI sets TRANSFERLAB_DATA_DIR and then a missing set is a failure."""
    base = os.environ.get(DATA_ENV)
    if not base:
        pytest.skip(f"{DATA_ENV} is not set: real-data test skipped")
    root = Path(base) / name
    if not root.is_dir():
        pytest.fail(f"{DATA_ENV}={base} is set but {root} does not exist")
    return root


def write_image(path: Path, size=(40, 30), mode="RGB", color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def make_image_folder(root: Path, noise: float = 0.0) -> Path:
    """A tiny two-class ImageFolder with train and val splits: a red and a blue class, each pixel
    with Gaussian `noise` (std, in 0..255 levels) or none."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for cls, color in (("cats", (220, 20, 20)), ("dogs", (20, 20, 220))):
            for i in range(n):
                path = write_image(root / split / cls / f"{i}.png", color=color)
                if noise:
                    pixels = np.asarray(color) + rng.normal(0, noise, (30, 40, 3))
                    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
    return root


def make_mask_folder(root: Path, size: int = 32) -> Path:
    """Tiny image/mask pairs: a bright square on dark noise, its mask 255 inside, 0 outside."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for i in range(n):
            image = rng.integers(0, 60, (size, size), dtype=np.uint8)
            mask = np.zeros((size, size), dtype=np.uint8)
            top, left, side = rng.integers(2, size // 2, 3)
            image[top:top + side, left:left + side] += 150
            mask[top:top + side, left:left + side] = 255
            for folder, pixels in (("images", image), ("masks", mask)):
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / split / folder / f"p{i}.png")
    return root


GRATINGS = {"vertical": 0.0, "diagonal": 45.0, "horizontal": 90.0, "antidiagonal": 135.0}


def grating_image(rng: np.random.Generator, angle: float, size: int = 32) -> Image.Image:
    """Stripes of one orientation in a disc, on a cluttered background (random coloured
    rectangles, noise): the orientation is the class, everything else varies per image."""
    img = np.full((size, size, 3), rng.uniform(60, 200, 3))
    for _ in range(rng.integers(4, 8)):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(4, 14, 2)
        img[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:size, 0:size]
    t = np.deg2rad(angle)
    wave = np.sin(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / rng.uniform(5, 8) + rng.uniform(0, 2 * np.pi))
    cx, cy = rng.integers(10, 22, 2)
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < rng.uniform(8, 12) ** 2
    img = img + (disc * wave * 70)[..., None] + rng.normal(0, 12, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def make_gratings(root: Path, classes: list[str], train: int, val: int, seed: int) -> Path:
    """An ImageFolder of `grating_image`s: `train` and `val` images per class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                grating_image(rng, GRATINGS[cls]).save(folder / f"{i}.png")
    return root


def patch_image(rng: np.random.Generator, colour: tuple, size: int = 64) -> Image.Image:
    """A square of `colour` somewhere in the top-left quadrant, the only evidence of the class:
    the other three quadrants hold red and blue squares too, of either colour at random, and
    clutter of other colours lies everywhere."""
    img = rng.normal(120, 20, (size, size, 3))
    for _ in range(rng.integers(6, 10)):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 10, size // 3, 2)
        img[y0:y0 + h, x0:x0 + w] = rng.choice([(40, 160, 40), (200, 200, 60), (90, 90, 90), (230, 230, 230)])
    half = size // 2
    for (qx, qy), square in zip(((0, 0), (1, 0), (0, 1), (1, 1)),
                                (colour, *(rng.choice([RED, BLUE]) for _ in range(3)))):
        side = rng.integers(size // 8, size // 5)
        x0, y0 = rng.integers(2, half - side, 2)
        img[qy * half + y0:qy * half + y0 + side, qx * half + x0:qx * half + x0 + side] = square
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


RED, BLUE = (230, 20, 20), (20, 20, 230)


def make_patch_folder(root: Path, train: int, val: int, seed: int = 0, size: int = 64) -> Path:
    """Two classes told apart by a red or a blue square in the top-left quadrant (patch_image)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for cls, colour in (("red", RED), ("blue", BLUE)):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                patch_image(rng, colour, size).save(folder / f"{i}.png")
    return root
