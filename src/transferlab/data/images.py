"""Finding and opening image files, with one policy for files that are not usable images.

Policy: files whose extension is not an image extension (torchvision's list: the ants/bees
placeholder `imageNotFound.gif` among them) are ignored and counted in the log. Files with an
image extension that do not decode are "bad". A DataModule decodes every candidate file of every
split in one pass (`find_bad_files`), so one run reports all of them: `on_bad_file=error` stops
before training with a `BadFilesError` listing them, `warn` skips each with a warning line, `skip`
skips them with one line naming them. The caller writes the full list to `bad_files.txt`.
"""

import hashlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from transferlab.data.scan import map_files
from transferlab.errors import BadFilesError, ConfigError, first_few

log = logging.getLogger(__name__)

BAD_FILE_POLICIES = ("error", "warn", "skip")
T = TypeVar("T")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS


def files_under(folder: Path) -> list[Path]:
    """Every file below `folder` (symlinks to files too, not into linked folders, as
    `Path.rglob`), in `sorted(Path)`'s order. os.scandir's entry types spare a stat per file:
    60,000 files list in a fraction of a second instead of seconds."""
    found, todo = [], [os.fspath(folder)]
    while todo:
        with os.scandir(todo.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    todo.append(entry.path)
                elif entry.is_file():
                    found.append(entry.path)
    return [Path(p) for p in sorted(found, key=lambda p: p.split(os.sep))]


def load_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as img:
        return as_rgb(img)


def as_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB, the same way for training and inference."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # palette transparency must go through RGBA to convert cleanly
    elif img.mode.startswith("I"):
        # 16-bit greyscale: PIL's own conversion clips everything above 255 to white
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).round().astype(np.uint8))
    return img.convert("RGB")


def decode_problem(path: Path) -> str | None:
    """Why `path` cannot be used as an image, or None. Decodes the whole file (at reduced scale
    for JPEGs, which is fast) so truncation is caught here and not inside a DataLoader worker."""
    return inspect_file(path)[0]


def inspect_file(path: Path) -> tuple[str | None, str]:
    """`decode_problem(path)` and the SHA-1 of the bytes it decoded ("?" if unreadable), from one
    read of the file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        return f"{type(err).__name__}: {err}", "?"
    return _problem(data), hashlib.sha1(data).hexdigest()


def _problem(data: bytes) -> str | None:
    if not data:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (64, 64))
            img.load()
    except Exception as err:  # PIL raises several unrelated types for broken files
        return f"{type(err).__name__}: {err}"
    return None


def check_policy(on_bad_file: str) -> None:
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ConfigError(f"on_bad_file={on_bad_file!r}; choose one of {BAD_FILE_POLICIES}")


def find_bad_files(files: list[Path], on_bad_file: str,
                   known: list[tuple[Path, str]] = (), scan=None) -> list[tuple[Path, str]]:
    """Decode all `files` in one pass and apply the bad-file policy to those that fail, together
    with any `known` bad ones (e.g. files that are no images): raise a BadFilesError listing
    every one, or log them and return them, as (path, reason), for the caller to leave out.
    `scan` (a `transferlab.data.scan.ScanCache`): files unchanged since an earlier run are not
    decoded again."""
    check_policy(on_bad_file)
    problems = scan.lookup(files, "problem") if scan is not None else map_files(decode_problem, files)
    bad = [*known, *((f, why) for f, why in zip(files, problems) if why)]
    if not bad:
        return []
    if on_bad_file == "error":
        raise BadFilesError(bad)
    if on_bad_file == "warn":
        for f, why in bad:
            log.warning("skipping bad image %s (%s)", f, why)
    log.info("skipped %d bad image file(s): %s", len(bad), first_few([str(f) for f, _ in bad], ", "))
    return bad


def write_bad_files(path: Path, bad: list[tuple[Path, str]]) -> None:
    """One `<file>\t<reason>` line per bad file; the log says where the list went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{f}\t{why}\n" for f, why in bad))
    log.info("all %d unusable file(s), with the reasons, are listed in %s", len(bad), path)


def listed(path: Path, check: Callable[[], tuple[T, list[tuple[Path, str]]]]) -> tuple[T, list]:
    """Run `check`, which returns (its result, the bad files it left out) or raises a
    BadFilesError naming them, and list every bad file in `path` either way (a list left from an
    earlier run into the same place goes first)."""
    path.unlink(missing_ok=True)
    try:
        result, bad = check()
    except BadFilesError as err:
        write_bad_files(path, err.bad)
        raise
    if bad:
        write_bad_files(path, bad)
    return result, bad
