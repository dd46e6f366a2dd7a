"""Checkpoints that survive what happens to runs: written whole or not at all, read back with a
one-line reason when they cannot be.

`AtomicCheckpointIO` (a Lightning CheckpointIO plugin, the `checkpoint_io` config) writes each
checkpoint to a temporary file in its own directory, fsyncs it and renames it over the old one,
so a kill at any moment leaves the previous checkpoint intact (Lightning's own save moves a temp
file from the system temp dir, a copy when the run dir is on another filesystem). A full disk is
one `DiskFullError` naming the dir, the file, the room a checkpoint needs and the last good one.
"""

import errno
import io
import os
import shutil
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from transferlab.errors import DataError


class DiskFullError(DataError):
    """The disk under a run dir is full; the message says what to free and what is kept."""


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                self.write(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            sync_dir(path.parent)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(disk_full_message(path)) from None
            raise

    def write(self, checkpoint: dict, f) -> None:
        """The bytes of one checkpoint into the open temporary file: serialised in memory first
        (as Lightning's own save does), so a full disk is the OSError of a plain write, not
        torch's writer losing its place."""
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        f.write(buffer.getbuffer())


def sync_dir(folder: Path) -> None:
    """The rename is durable once the directory entry is (POSIX); elsewhere a no-op."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def disk_full_message(path: Path) -> str:
    folder = path.parent
    others = sorted((p for p in folder.glob("*.ckpt") if p != path), key=lambda p: p.stat().st_mtime)
    need = max((p.stat().st_size for p in others), default=0)
    free = shutil.disk_usage(folder).free
    kept = f"the last good checkpoint is {others[-1]}" if others else "no checkpoint was written yet"
    return (f"the disk under {folder.parent} is full while writing {path.name}: a checkpoint takes "
            f"about {need / 2**20:.0f} MB and {free / 2**20:.0f} MB are free; {kept}. Free some room "
            "(or point hydra.run.dir elsewhere) and continue with transferlab-train resume=<run dir>")


def readable(path: Path) -> str | None:
    """Why a checkpoint cannot be read back (a copy cut short, another file), or None. Memory-maps
    it, so a large checkpoint is not read whole."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # zip, pickle and OS errors: torch raises many types
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
        return f"{type(err).__name__}: {first}" if first else type(err).__name__
    return None
