"""One training run: compose data, model, freeze strategy and trainer from the config and fit.

`transferlab.train` (the Hydra app) imports this module only once a run starts, so `--help`,
`--cfg` and config errors answer without loading torch and Lightning.
"""

import difflib
import inspect
import logging
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from transferlab.callbacks import EpochSeed, RunSummary
from transferlab.class_weights import decide_class_weights, describe
from transferlab.console import quiet_libraries
from transferlab.data.images import write_bad_files
from transferlab.data.splits import write_record
from transferlab.errors import BadFilesError, ConfigError
from transferlab.summary import update_summary
from transferlab.train import swept_hparams

log = logging.getLogger("transferlab")


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


def check_trainer(trainer_cfg: DictConfig) -> None:
    """Settings the Trainer would reject, named with their fix before anything is built."""
    accepted = inspect.signature(L.Trainer.__init__).parameters
    unknown = [k for k in trainer_cfg if k != "_target_" and k not in accepted]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(accepted), n=3, cutoff=0.5)
            hints.append(f"trainer.{key}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(
            f"lightning.pytorch.Trainer has no argument {'; '.join(hints)}. "
            "The Trainer's arguments are listed in conf/trainer/default.yaml (transferlab-train "
            "--cfg job shows them) and set without '+': trainer.<name>=<value>"
        )
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but torch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}). Use trainer=cpu, or trainer=default, which picks the "
            "GPU when there is one."
        )


def check_monitor(monitor: str, model) -> None:
    """The monitor picks checkpoints and stops early; Lightning would only find it missing after
    the first epoch."""
    known = model.monitorable()
    if monitor not in known:
        raise ConfigError(f"monitor={monitor} is not a metric a {model.task} run logs; choose one "
                          f"of {', '.join(known)} (and monitor_mode=max or min to match)")


def fit(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None = None) -> float | None:
    """The best monitor value, which a Hydra sweeper that optimises (Optuna, Ax) reads."""
    quiet_libraries()
    check_multirun_strategy(cfg, HydraConfig.get())
    check_trainer(cfg.trainer)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    init = instantiate(cfg.init)
    # The one place the normalisation is decided: the pretrained weights' own, else ImageNet's.
    mean, std = init.normalization(get_class(cfg.backbone._target_), cfg.backbone.name)
    datamodule = instantiate(cfg.data, mean=cfg.data.get("mean") or mean, std=cfg.data.get("std") or std)
    datamodule.prepare_data()
    try:
        datamodule.setup("fit")
    except BadFilesError as err:
        write_bad_files(run_dir / "bad_files.txt", err.bad)
        raise
    if datamodule.bad_files:
        write_bad_files(run_dir / "bad_files.txt", datamodule.bad_files)

    num_classes = cfg.model.get("num_classes") or len(datamodule.classes)
    if num_classes != len(datamodule.classes):
        raise ConfigError(
            f"model.num_classes={num_classes} but {datamodule.root} has "
            f"{len(datamodule.classes)} classes {datamodule.classes}"
        )
    # Plain dicts, not DictConfigs, so checkpoints load anywhere with weights_only=True.
    model_args = plain(cfg.model)
    if "class_weights" in model_args:
        model_args["class_weights"] = decide_class_weights(
            model_args["class_weights"], datamodule.train_class_counts(), list(datamodule.classes))
        log.info("class weights in the loss (model.class_weights=%s): %s", cfg.model.class_weights,
                 describe(model_args["class_weights"], list(datamodule.classes)))
    model = get_class(model_args.pop("_target_"))(
        **model_args | {"num_classes": num_classes},
        backbone=plain(cfg.backbone),
        freeze=plain(cfg.freeze),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")),
        class_names=list(datamodule.classes),
        preprocess=datamodule.preprocess,
    )
    model.backbone.check_image_size(datamodule.image_size)
    check_monitor(cfg.monitor, model)
    init(model.backbone)

    summary = RunSummary(
        run_dir / "summary.json", cfg.monitor, cfg.monitor_mode, hparams=swept_hparams(cfg)
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks += [summary, EpochSeed(cfg.seed)]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        write_record(run_dir / "split.json", datamodule.split_record)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if datamodule.test_set is not None:
        test_selected(trainer, model, datamodule, summary)
    return summary.best


def test_selected(trainer: L.Trainer, model, datamodule, summary: RunSummary) -> None:
    """Test once, after fit, the checkpoint that validation chose (not the last one): training
    and checkpoint selection are over before any test image is read."""
    checkpoint = summary.best_checkpoint(trainer)
    if checkpoint is None:
        log.warning("no checkpoint follows %s, so the test split is not scored", summary.monitor)
        update_summary(summary.path, test={"error": f"no checkpoint follows {summary.monitor}"})
        return
    results = trainer.test(model, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero:
        update_summary(summary.path, test={
            "checkpoint": checkpoint, "epoch": summary.best_epoch, "n_images": len(datamodule.test_set),
            "metrics": metrics,
        })
    log.info("test at the selected checkpoint (epoch %s, %s): %s", summary.best_epoch,
             Path(checkpoint).name, ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
