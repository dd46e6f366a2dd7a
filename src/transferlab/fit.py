"""One training run: compose data, model, freeze strategy and trainer from a config and fit.

`fit(cfg, run_dir)` takes the config `transferlab-train` composes (or `transferlab.config.compose`
from Python) and needs no Hydra app; `transferlab.cli.train` imports it once a run starts, so
`--help`, `--cfg` and config errors answer without loading torch and Lightning.
"""

import difflib
import inspect
import json
import logging
from functools import partial
from pathlib import Path

import lightning as L
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from transferlab.callbacks import EpochSeed, RunSummary
from transferlab.class_weights import decide_class_weights, describe
from transferlab.console import quiet_libraries
from transferlab.data.images import listed
from transferlab.data.splits import write_record
from transferlab.devices import resolve
from transferlab.errors import ConfigError
from transferlab.summary import update_summary, write_config

log = logging.getLogger("transferlab")


def plain(cfg: DictConfig | None) -> dict | None:
    """Plain containers, not DictConfigs: checkpoints then load anywhere with weights_only=True."""
    return None if cfg is None else OmegaConf.to_container(cfg, resolve=True)


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
    if accelerator in ("gpu", "cuda"):
        resolve(accelerator, key="trainer.accelerator",
                fix="Use trainer=cpu, or trainer=default, which picks the GPU when there is one")


def check_monitor(monitor: str, model) -> None:
    """The monitor picks checkpoints and stops early; Lightning would only find it missing after
    the first epoch."""
    known = model.monitorable()
    if monitor not in known:
        raise ConfigError(f"monitor={monitor} is not a metric a {model.task} run logs; choose one "
                          f"of {', '.join(known)} (and monitor_mode=max or min to match)")


def build_data(cfg: DictConfig, run_dir: Path):
    """The datamodule, set up (every file checked, the split made), normalised as `init` says."""
    init = instantiate(cfg.init)
    # The one place the normalisation is decided: the pretrained weights' own, else ImageNet's.
    mean, std = init.normalization(get_class(cfg.backbone._target_), cfg.backbone.name)
    datamodule = instantiate(cfg.data, mean=cfg.data.get("mean") or mean, std=cfg.data.get("std") or std,
                             augmentation=cfg.get("augment"), mixing=cfg.get("mixup"))
    datamodule.prepare_data()

    def setup():
        datamodule.setup("fit")
        return datamodule, datamodule.bad_files

    log.info("data: listing and checking the files under %s", datamodule.root)
    listed(run_dir / "bad_files.txt", setup)
    return datamodule, init


def build_model(cfg: DictConfig, datamodule):
    """The LightningModule of `cfg.model`, sized and named by the data."""
    classes = list(datamodule.classes)
    num_classes = cfg.model.get("num_classes") or len(classes)
    if num_classes != len(classes):
        raise ConfigError(f"model.num_classes={num_classes} but {datamodule.root} has "
                          f"{len(classes)} classes {classes}")
    model_args = plain(cfg.model)
    module_class = get_class(model_args.pop("_target_"))
    if module_class.task != datamodule.task:
        raise ConfigError(f"model {module_class.__name__} is for task {module_class.task}, but "
                          f"data {type(datamodule).__name__} holds {datamodule.task} data")
    if datamodule.mixing.active:
        model_args["mixed_targets"] = True  # soft targets: train accuracy is the dominant label's
    if "class_weights" in model_args:
        model_args["class_weights"] = decide_class_weights(
            model_args["class_weights"], datamodule.train_class_counts(), classes)
        log.info("class weights in the loss (model.class_weights=%s): %s", cfg.model.class_weights,
                 describe(model_args["class_weights"], classes))
    return module_class(
        **model_args | {"num_classes": num_classes},
        backbone=plain(cfg.backbone), freeze=plain(cfg.freeze), optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")), class_names=classes, preprocess=datamodule.preprocess,
    )


def fit(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None = None,
        hparams: dict | None = None) -> float | None:
    """Train as `cfg` says into `run_dir` (continuing from `ckpt_path` if given), then score the
    checkpoint validation chose on the test split, if there is one. `hparams`: the settings the
    run is compared by (logged with its best value). Returns the best monitor value, which a
    Hydra sweeper that optimises (Optuna) reads."""
    quiet_libraries()
    run_dir = Path(run_dir)
    if ckpt_path is None and not (run_dir / "config.yaml").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, cfg)  # the run dir describes itself, however fit was called
    check_trainer(cfg.trainer)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, init = build_data(cfg, run_dir)
    model = build_model(cfg, datamodule)
    model.backbone.check_image_size(datamodule.image_size)
    check_monitor(cfg.monitor, model)
    init(model.backbone)

    summary = RunSummary(run_dir / "summary.json", cfg.monitor, cfg.monitor_mode, hparams=hparams)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks += [summary, EpochSeed(cfg.seed)]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    plugins = [instantiate(p) for p in cfg.trainer.get("plugins") or []]
    if cfg.get("checkpoint_io"):
        plugins.append(instantiate(cfg.checkpoint_io))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins or None)
    if trainer.is_global_zero:
        write_record(run_dir / "split.json", datamodule.split_record)
    if ckpt_path is None:  # a resumed run's statistics are in its checkpoint
        adapt_statistics(model, datamodule, trainer.strategy.root_device)
    if str(cfg.optimizer.lr) == "auto":
        auto_lr(model, datamodule, partial(instantiate, cfg.trainer), callbacks, trainer, summary,
                resumed=ckpt_path is not None)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if datamodule.test_set is not None:
        test_selected(trainer, model, datamodule, summary)
    return summary.best


def auto_lr(model, datamodule, make_trainer, callbacks: list, trainer: L.Trainer,
            summary: RunSummary, resumed: bool) -> None:
    """optimizer.lr=auto: the LR range test's pick (`transferlab.lr_find`) becomes the module's
    optimizer.lr, in its hparams (so in every checkpoint), summary.json and the hparams the run
    is compared by; a resumed run reads the pick its first start recorded, never testing again."""
    from transferlab.lr_find import find_lr

    run_dir = summary.path.parent
    if resumed:
        record = json.loads((run_dir / "lr_find.json").read_text())
    else:
        record = find_lr(model, datamodule, make_trainer, callbacks, run_dir)
        for logger in trainer.loggers:
            if hasattr(logger.experiment, "add_figure"):
                logger.experiment.add_figure("lr_find", record["figure"], 0)
    model.hparams.optimizer = dict(model.hparams.optimizer) | {"lr": record["lr"]}
    summary.hparams["lr"] = record["lr"]
    if trainer.is_global_zero:
        update_summary(summary.path, lr_find={"lr": record["lr"], "rule": record["rule"],
                                              "steps": record["steps"], "plot": "lr_find.png"})


def adapt_statistics(model, datamodule, device) -> None:
    """freeze.bn_stats=target: the frozen BatchNorm statistics re-estimated on the train images,
    before training and before anything (the feature cache) reads the frozen stages."""
    if model.freeze_strategy.bn_stats == "source":
        return
    model.to(device)
    model.freeze_strategy.adapt_statistics(model.stages, model.net, datamodule.fixed_view("train"),
                                           datamodule.batch_size, datamodule.num_workers, device)


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
