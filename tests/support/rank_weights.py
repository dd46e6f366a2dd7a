"""A callback the DDP test loads into the real CLI (via PYTHONPATH) to see every rank's weights."""

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class SaveRankWeights(Callback):
    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer, pl_module):
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.state_dict(), self.dirpath / f"rank{trainer.global_rank}.pt")
