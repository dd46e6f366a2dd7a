"""Finding and opening image files, with one policy for files that are not usable images.

Policy: files whose extension is not an image extension (torchvision's list: the ants/bees
placeholder `imageNotFound.gif` among them) are ignored and counted in the log. Files with an
image extension that do not decode are "bad": `on_bad_file=error` stops before training naming
the file, `warn` skips each with a warning line, `skip` skips them with one summary line.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from transferlab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BAD_FILE_POLICIES = ("error", "warn", "skip")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS


def load_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as img:
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # palette transparency must go through RGBA to convert cleanly
        elif img.mode.startswith("I"):
            # 16-bit greyscale: PIL's own conversion clips everything above 255 to white
            img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).round().astype(np.uint8))
        return img.convert("RGB")


def decode_problem(path: Path) -> str | None:
    """Why `path` cannot be used as an image, or None. Decodes the whole file (at reduced scale
    for JPEGs, which is fast) so truncation is caught here and not inside a DataLoader worker."""
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))
            img.load()
    except Exception as err:  # PIL raises several unrelated types for broken files
        return f"{type(err).__name__}: {err}"
    return None


def check_policy(on_bad_file: str) -> None:
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ConfigError(f"data.on_bad_file={on_bad_file!r}; choose one of {BAD_FILE_POLICIES}")


def usable_images(files: list[Path], on_bad_file: str, workers: int = 8) -> list[Path]:
    """Keep the files that decode; apply the bad-file policy to the rest."""
    with ThreadPoolExecutor(workers) as pool:
        problems = list(pool.map(decode_problem, files))
    bad = [(f, why) for f, why in zip(files, problems) if why]
    if bad and on_bad_file == "error":
        listing = "\n".join(f"  {f}: {why}" for f, why in bad[:20])
        raise DataError(
            f"{len(bad)} image file(s) cannot be decoded:\n{listing}\n"
            "Remove or fix them, or set data.on_bad_file=skip (or warn) to train without them."
        )
    for f, why in bad:
        if on_bad_file == "warn":
            log.warning("skipping bad image %s (%s)", f, why)
    if bad:
        log.info("skipped %d bad image file(s)", len(bad))
    return [f for f, why in zip(files, problems) if not why]
