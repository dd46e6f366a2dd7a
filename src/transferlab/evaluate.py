"""Score a finished run's checkpoint on labelled images: `evaluate(run, split=...)`.

The images are read the way validation read them (the checkpoint's own preprocessing, through
`transferlab.load`), the split's files the way training listed them (the run's own DataModule,
from its config.yaml), and the task (`transferlab.tasks`) scores them and writes its metrics,
tables and figures to `<run>/eval/<split>-<checkpoint>/`. Every metric is torchmetrics',
accumulated as the training modules do, so the run's own val split at its training image size
gives back the val numbers of summary.json. `transferlab-eval` is this from the command line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transferlab.console import quiet_libraries, shown
from transferlab.errors import ConfigError, DataError
from transferlab.tasks.base import EvalInputs, Evaluation

log = logging.getLogger("transferlab")

NAMED_SPLITS = ("val", "test")  # <data.root>/<split>; any other value is a folder

__all__ = ["Evaluation", "evaluate", "out_dir"]


def split_name(split: str) -> str:
    return split if split in NAMED_SPLITS else Path(os.path.abspath(split)).name


def checkpoint_name(checkpoint: str) -> str:
    return checkpoint if checkpoint in ("best", "last") else Path(checkpoint).stem


def out_dir(run: str | Path, split: str, checkpoint: str, out: str | Path | None = None) -> Path:
    """Where an evaluation writes: `out`, else <run>/eval/<split name>-<checkpoint name>."""
    if out:
        return Path(out)
    return Path(run) / "eval" / f"{split_name(str(split))}-{checkpoint_name(str(checkpoint))}"


def run_config(run_dir: Path) -> DictConfig:
    """The run's saved config (as trained: resolved): eval reads the data layout from it."""
    path = run_dir / "config.yaml"
    run_cfg = OmegaConf.load(path) if path.is_file() else None
    if run_cfg is None or "data" not in run_cfg:
        raise ConfigError(f"{path} is missing or has no data settings: eval reads the layout of "
                          "the run's data (and data.root) from it")
    return run_cfg


def split_dir(run_dir: Path, split: str, run_cfg: DictConfig) -> Path:
    if split not in NAMED_SPLITS:
        folder = Path(split)
        if not folder.is_dir():
            raise DataError(f"split={split}: folder {folder} does not exist")
        return folder
    config = run_dir / "config.yaml"
    root = OmegaConf.select(run_cfg, "data.root")
    if not root:
        raise ConfigError(f"split={split} means <data.root>/{split}, but {config} sets no "
                          "data.root; pass the folder itself: split=<folder>")
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(
            f"split={split}: {folder} does not exist (data.root={root} in {config}). Pass a folder "
            "in the same layout instead: split=<folder>"
        )
    return folder


def split_data(run_cfg: DictConfig, folder: Path):
    """The run's own DataModule (its layout, pairing and mask settings) pointed at `folder`'s
    parent, so a split is read exactly as training read its val folder."""
    from hydra.utils import instantiate

    return instantiate(run_cfg.data, root=str(folder.parent))


def evaluate(run: str | Path, split: str = "val", checkpoint: str = "best",
             out: str | Path | None = None, device: str | None = None, batch_size: int = 16,
             num_workers: int = 2, on_bad_file: str = "warn", cam=None) -> Evaluation:
    """Check the inputs, predict, and let the task score and write the results; with `cam` (a
    `transferlab.explain.CamSettings` with a method) its figure of the worst images shows where
    the model looked."""
    from transferlab.inference import checkpoint_path, load

    run_dir = Path(run)
    checkpoint_path(run_dir, str(checkpoint))  # a missing one stops before anything loads
    run_cfg = run_config(run_dir)
    folder = split_dir(run_dir, str(split), run_cfg)
    predictor = load(run_dir, str(checkpoint), device)
    quiet_libraries()
    log.info("evaluating %s on %s (%s)", shown(predictor.checkpoint), shown(folder), predictor.device)
    inputs = EvalInputs(predictor, split_data(run_cfg, folder), folder,
                        out_dir(run_dir, split, checkpoint, out), batch_size, num_workers, on_bad_file,
                        cam)
    return predictor.task.evaluate(inputs)
