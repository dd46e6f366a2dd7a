"""Faults the tests inject into real runs, through the configs' `_target_`s (PYTHONPATH=repo)."""

import errno
import io
import time

import torch

from transferlab.checkpoints import AtomicCheckpointIO


class SlowCheckpointIO(AtomicCheckpointIO):
    """Writes each checkpoint in 20 pieces, 0.1 s apart: a window to kill the run mid-write."""

    def write(self, checkpoint, f):
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        step = len(data) // 20 + 1
        for start in range(0, len(data), step):
            f.write(data[start:start + step])
            f.flush()
            time.sleep(0.1)


class FullDiskIO(AtomicCheckpointIO):
    """A disk that fills up after the first checkpoint: later writes fail as a full disk does."""

    written = 0

    def write(self, checkpoint, f):
        FullDiskIO.written += 1
        if FullDiskIO.written > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write(checkpoint, f)
