"""A run dir's record of itself: `config.yaml`, the composed config it runs with (what resume
restores), and `summary.json`, the one file that says how it went (the closing block and the sweep
report read it, the `RunSummary` callback writes it). Imports nothing heavy, so a run that fails
before torch loads still records why."""

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """config.yaml: the config resolved, so the run dir describes itself without Hydra (Hydra's
    own settings, present when composed from Python, left out)."""
    own = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    (Path(run_dir) / "config.yaml").write_text(OmegaConf.to_yaml(own, resolve=True))


def update_summary(path: Path, **fields) -> None:
    data = read_summary(path)
    data.update(fields)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)  # a run killed mid-write never leaves half a file


def read_summary(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def test_metric(monitor: str) -> str:
    """The test split's name for the monitor's metric (val/acc -> test/acc): what the run scores
    once, at the checkpoint the monitor chose."""
    return "test/" + monitor.split("/", 1)[-1]


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of a run's best monitor value: the one summary.json names (found by its file
    name, so a moved run dir still finds it), else the newest best-*.ckpt; None when there is none."""
    folder = Path(run_dir) / "checkpoints"
    named = read_summary(Path(run_dir) / "summary.json").get("best_checkpoint")
    found = [folder / Path(named).name] if named else sorted(folder.glob("best-*.ckpt"))
    return found[-1] if found and found[-1].is_file() else None
