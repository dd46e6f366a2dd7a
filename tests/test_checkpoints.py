"""Checkpoints are written whole or not at all, a full disk is one message, and a checkpoint cut
short is named, with the way to go on."""

import errno

import pytest
import torch

from transferlab.checkpoints import AtomicCheckpointIO, DiskFullError, readable
from transferlab.cli.train import resumed_checkpoint
from transferlab.errors import ConfigError


class Crashing(AtomicCheckpointIO):
    def __init__(self, error: OSError):
        super().__init__()
        self.error = error

    def write(self, checkpoint, f):
        f.write(b"half a checkpoint")
        raise self.error


def test_a_write_that_fails_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    with pytest.raises(OSError):
        Crashing(OSError(errno.EIO, "I/O error")).save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "the temporary file stayed"


def test_a_full_disk_is_one_message_naming_what_to_free_and_what_is_kept(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1000)}, folder / "best-epoch000.ckpt")
    with pytest.raises(DiskFullError) as err:
        Crashing(OSError(errno.ENOSPC, "No space left")).save_checkpoint({}, folder / "last.ckpt")
    message = str(err.value)
    for part in (f"the disk under {tmp_path / 'run'} is full while writing last.ckpt",
                 "a checkpoint takes about", f"the last good checkpoint is {folder / 'best-epoch000.ckpt'}",
                 "resume=<run dir>"):
        assert part in message, message


def test_a_checkpoint_cut_short_is_named_with_the_newest_readable_one(tmp_path):
    folder = tmp_path / "checkpoints"
    AtomicCheckpointIO().save_checkpoint({"epoch": 0}, folder / "best-epoch000.ckpt")
    AtomicCheckpointIO().save_checkpoint({"epoch": 3, "w": torch.ones(10_000)}, folder / "last.ckpt")
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])  # a copy that broke off
    assert readable(last) and readable(folder / "best-epoch000.ckpt") is None
    with pytest.raises(ConfigError, match=r"last.ckpt is unreadable, cut short .*continue from the "
                                          r"newest readable one, best-epoch000.ckpt: .* resume_from=best"):
        resumed_checkpoint(tmp_path, "last")
    assert resumed_checkpoint(tmp_path, "best") == folder / "best-epoch000.ckpt"
    with pytest.raises(ConfigError, match="resume_from=nowhere.ckpt: nowhere.ckpt does not exist"):
        resumed_checkpoint(tmp_path, "nowhere.ckpt")
