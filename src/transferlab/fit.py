"""`transferlab-train`: the Hydra app that composes data, model, strategy and trainer."""

import logging
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from transferlab.callbacks import EpochSeed
from transferlab.errors import ConfigError
from transferlab.summary import RunSummary, update_summary

log = logging.getLogger("transferlab")

OmegaConf.register_new_resolver(
    "unless_resuming", lambda resume, value: None if resume else value, replace=True
)

# Frozen stages sit in eval mode on purpose (BatchNorm statistics stay put, Dropout is off).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")


def config_dir() -> str:
    """The configs ship inside the wheel; an editable install reads the repo's `conf/`."""
    packaged = Path(__file__).parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")


def plain(cfg: DictConfig | None) -> dict | None:
    return None if cfg is None else OmegaConf.to_container(cfg, resolve=True)


def device_count(trainer_cfg: DictConfig) -> int:
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if devices in ("auto", -1, "-1"):
        return torch.cuda.device_count() if trainer_cfg.get("accelerator") in ("gpu", "cuda") else 1
    return int(devices)


def check_multirun_strategy(cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """Lightning's `ddp` starts the other ranks by re-running the command line; under `-m` that
    re-runs the whole sweep in every rank. Spawned ranks, and ranks that SLURM starts (the
    submitit launcher), re-run nothing."""
    processes = device_count(cfg.trainer) * int(cfg.trainer.get("num_nodes", 1))
    strategy = str(cfg.trainer.get("strategy", "auto"))
    relaunches = not ("spawn" in strategy or "fork" in strategy)
    by_cluster = "submitit" in str(hydra_cfg.launcher.get("_target_", ""))
    if hydra_cfg.mode == RunMode.MULTIRUN and processes > 1 and relaunches and not by_cluster:
        raise ConfigError(
            f"trainer.strategy={strategy} with {processes} processes cannot run inside a Hydra "
            "multirun (-m): it re-executes the command line, which would start the sweep again in "
            "every rank. Use trainer.strategy=ddp_spawn for sweeps, or launch each run on its own."
        )


def swept_hparams(cfg: DictConfig) -> dict:
    """The settings worth comparing across runs: group choices, the overrides, seed, lr."""
    hc = HydraConfig.get()
    params = {f"choice/{k}": v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
    for override in hc.overrides.task:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    params |= {"seed": cfg.seed, "backbone": cfg.backbone.name, "lr": cfg.optimizer.lr}
    return {k: str(v) if v is None else v for k, v in params.items()}


def restore_run(run_dir: Path) -> tuple[DictConfig, Path]:
    """The saved config and last checkpoint of a run to continue."""
    others = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    if others:
        raise ConfigError(
            f"resume restores the run's saved config; drop the other overrides {others} "
            "(start a new run to change settings)"
        )
    saved, last = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not saved.is_file():
        raise ConfigError(f"resume={run_dir}: no config.yaml there, so it is not a transferlab run dir")
    if not last.is_file():
        raise ConfigError(f"resume={run_dir}: {last} does not exist; the run never finished an epoch")
    log.info("resuming %s from %s", run_dir, last)
    return OmegaConf.load(saved), last


def train(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None = None) -> float | None:
    check_multirun_strategy(cfg, HydraConfig.get())
    L.seed_everything(cfg.seed, workers=True)

    init = instantiate(cfg.init)
    mean, std = init.normalization(cfg.backbone.name)
    datamodule = instantiate(cfg.data, mean=cfg.data.get("mean") or mean, std=cfg.data.get("std") or std)
    datamodule.prepare_data()
    datamodule.setup("fit")

    num_classes = cfg.model.get("num_classes") or len(datamodule.classes)
    if num_classes != len(datamodule.classes):
        raise ConfigError(
            f"model.num_classes={num_classes} but {datamodule.root} has "
            f"{len(datamodule.classes)} classes {datamodule.classes}"
        )
    # Plain dicts, not DictConfigs, so checkpoints load anywhere with weights_only=True.
    model_args = plain(cfg.model)
    model = get_class(model_args.pop("_target_"))(
        **model_args | {"num_classes": num_classes},
        backbone=plain(cfg.backbone),
        freeze=plain(cfg.freeze),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")),
        class_names=list(datamodule.classes),
    )
    init(model.net, cfg.backbone.name)

    summary = RunSummary(
        run_dir / "summary.json", cfg.monitor, cfg.monitor_mode, hparams=swept_hparams(cfg)
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks += [summary, EpochSeed(cfg.seed)]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return summary.best


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        ckpt_path = None
        if cfg.get("resume"):
            cfg, ckpt_path = restore_run(run_dir)
        elif rank_zero_only.rank == 0:
            (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        log.info("config:\n%s", OmegaConf.to_yaml(cfg))
        return train(cfg, run_dir, ckpt_path)
    except BaseException as err:
        # The trainer records failures it sees; this catches the ones before it (bad data, config).
        if rank_zero_only.rank == 0:
            update_summary(
                run_dir / "summary.json",
                monitor=cfg.get("monitor"),
                status="failed",
                error=f"{type(err).__name__}: {err}",
            )
        raise


if __name__ == "__main__":
    main()
