"""`transferlab-train`: the Hydra app around `transferlab.fit`. It imports only Hydra at start, so
`--help`, `--cfg job` and config errors answer at once; torch and Lightning load when a run starts.
"""

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab.cli.common import closing, config_dir, shown, stop, unwrapped, user_errors
from transferlab.errors import ConfigError
from transferlab.summary import read_summary, test_metric, update_summary, write_config

log = logging.getLogger("transferlab")

# Keys of configs saved by earlier versions that today's constructors no longer take; a resumed
# run drops them (what they set is decided elsewhere now).
RETIRED_KEYS = ("callbacks.fast_training.num_workers", "callbacks.fast_training.pin_memory")


def refuse_bad_resume(args: list[str]) -> None:
    """`resume=<dir>` must name a run dir, checked before Hydra makes that dir its run dir (a
    mistyped path would otherwise leave an empty folder behind)."""
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "resume" and value not in ("", "null"):
            if not (Path(value) / "config.yaml").is_file():
                what = "does not exist" if not Path(value).exists() else "holds no config.yaml"
                sys.exit(
                    f"transferlab-train: resume={value}: {what}, so it is not a transferlab run "
                    "dir. Pass the run dir itself, e.g. resume=outputs/runs/<date>/<time>"
                )


def process_rank() -> int:
    """This process's global rank, from the variables DDP launchers and SLURM set (Lightning reads
    the same ones, but importing it here would cost the fast answers)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def restore_run(run_dir: Path, overrides: list[str], resume_from: str = "last") -> tuple[DictConfig, Path]:
    """The saved config of a run to continue, and the checkpoint it continues from (`resume_from`:
    last, best or a file), refused with one line when that checkpoint cannot be read back."""
    others = [o for o in overrides if not o.startswith(("resume=", "resume_from="))]
    if others:
        raise ConfigError(
            f"resume restores the run's saved config; drop the other overrides {others} "
            "(start a new run to change settings)"
        )
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"resume={run_dir}: no config.yaml there, so it is not a transferlab run dir")
    path = resumed_checkpoint(run_dir, str(resume_from))
    log.info("resuming %s from %s", shown(run_dir), shown(path))
    cfg = OmegaConf.load(run_dir / "config.yaml")
    for key in RETIRED_KEYS:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if node is not None and leaf in node:
            with open_dict(node):
                node.pop(leaf)
    return cfg, path


def resumed_checkpoint(run_dir: Path, resume_from: str) -> Path:
    from transferlab.checkpoints import readable
    from transferlab.summary import best_checkpoint

    folder = run_dir / "checkpoints"
    path = {"last": folder / "last.ckpt", "best": best_checkpoint(run_dir)}.get(resume_from, Path(resume_from))
    if path is None or not path.is_file():
        missing = "it has no best checkpoint" if path is None else f"{path} does not exist"
        raise ConfigError(f"resume={run_dir}: {missing}; the run never finished an epoch"
                          if resume_from == "last" else f"resume={run_dir} resume_from={resume_from}: {missing}")
    why = readable(path)
    if why is None:
        return path
    others = sorted((p for p in folder.glob("*.ckpt") if p != path and readable(p) is None),
                    key=lambda p: p.stat().st_mtime)
    fix = (f"continue from the newest readable one, {others[-1].name}: transferlab-train "
           f"resume={shown(run_dir)} resume_from={'best' if others[-1] == best_checkpoint(run_dir) else others[-1]}"
           if others else "no other checkpoint of the run reads back: start a new run")
    raise ConfigError(f"resume={shown(run_dir)}: {shown(path)} is unreadable, cut short by a crash or a "
                      f"broken copy ({why}); {fix}")


def device_count(trainer_cfg: DictConfig) -> int:
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if devices in ("auto", -1, "-1"):
        import torch

        return torch.cuda.device_count() if trainer_cfg.get("accelerator") in ("gpu", "cuda") else 1
    return int(devices)


def check_multirun_strategy(cfg: DictConfig) -> None:
    """Lightning's `ddp` starts the other ranks by re-running the command line; under `-m` that
    re-runs the whole sweep in every rank. Spawned ranks, and ranks that SLURM starts (the
    submitit launcher), re-run nothing."""
    hydra_cfg = HydraConfig.get()
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


def group_choices() -> dict:
    """The option chosen in each of transferlab's config groups (Hydra's own left out)."""
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}


def swept_hparams(cfg: DictConfig) -> dict:
    """The settings worth comparing across runs, by group name (`freeze`, `init`, ...): the
    group choices, the command-line overrides, and the values actually used."""
    params = group_choices()
    for override in HydraConfig.get().overrides.task:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    # `backbone.name=x` changes the network without changing the group choice.
    params |= {"seed": cfg.seed, "backbone": cfg.backbone.name, "lr": cfg.optimizer.lr}
    return {k: str(v) if v is None else v for k, v in params.items()}


def run_record(cfg: DictConfig) -> dict:
    """What summary.json says of a run from its first moment on, whatever happens next: how it
    was asked for (overrides, group choices, the settings worth comparing) and its monitor. The
    sweep report reads nothing else about a job."""
    return {
        "monitor": cfg.get("monitor"), "monitor_mode": cfg.get("monitor_mode"),
        "overrides": list(HydraConfig.get().overrides.task),
        "choices": group_choices(),
        "hparams": swept_hparams(cfg),
    }


def outcome(run_dir: Path, seconds: float, reason: str | None,
            loggers: DictConfig | None = None) -> list[tuple[str, str]]:
    """The closing block's lines: where things went and how it went, and where to look at it."""
    summary = read_summary(run_dir / "summary.json")
    lines = [("run dir", shown(run_dir)), ("status", summary.get("status") or "failed")]
    if reason is not None:
        lines += [("reason", reason.strip().splitlines()[0]), ("log", shown(run_dir / "train.log"))]
    best, monitor = summary.get("best"), summary.get("monitor")
    if best is not None:
        lines.append(("best", f"{monitor} {best:.4f} at epoch {summary.get('best_epoch')}"))
    if summary.get("best_checkpoint"):
        lines.append(("checkpoint", shown(Path(summary["best_checkpoint"]))))
    tested = (summary.get("test") or {}).get("metrics") or {}
    if monitor and test_metric(monitor) in tested:
        lines.append(("test", f"{test_metric(monitor)} {tested[test_metric(monitor)]:.4f} at that checkpoint"))
    lines.append(("time", f"{seconds:.0f} s, {summary.get('epochs_completed', 0)} epoch(s)"))
    if (run_dir / "tensorboard").is_dir():
        lines.append(("view", f"tensorboard --logdir {shown(run_dir)}"))
    loggers = loggers or {}
    if loggers.get("mlflow"):
        lines.append(("mlflow", f"mlflow ui --backend-store-uri {loggers.mlflow.tracking_uri}"))
    if (run_dir / "csv" / "metrics.csv").is_file():
        lines.append(("csv", shown(run_dir / "csv" / "metrics.csv")))
    return lines


def failed(err: BaseException, cfg: DictConfig, run_dir: Path, start: float) -> None:
    """Record and explain a run that ended early, then stop as the exit policy says."""
    err = unwrapped(err)
    if isinstance(err, (KeyboardInterrupt, SystemExit)):  # Lightning exits 1 on Ctrl-C
        resumable = (run_dir / "checkpoints" / "last.ckpt").is_file()
        reason = "interrupted; " + (
            f"continue it with: transferlab-train resume={shown(run_dir)}" if resumable
            else "it stopped before its first checkpoint"
        )
    else:
        reason = f"{type(err).__name__}: {err}"
        log.error("%s", reason)
    # The trainer records failures it sees; this catches the ones before it (bad data, config).
    try:
        update_summary(run_dir / "summary.json", monitor=cfg.get("monitor"),
                       monitor_mode=cfg.get("monitor_mode"), status="failed", error=reason)
    except OSError as write_error:  # a full or vanished disk: the reason below says what happened
        log.warning("summary.json not updated: %s", write_error)
    log.info("%s", closing("run failed", outcome(run_dir, time.perf_counter() - start, reason,
                                                 cfg.get("logger"))))
    stop(err, HydraConfig.get().mode)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    start = time.perf_counter()
    rank_zero = process_rank() == 0
    ckpt_path, hparams = None, None
    if cfg.get("resume"):
        with user_errors(hydra_cfg.mode):  # a refused resume leaves the run's record as it was
            cfg, ckpt_path = restore_run(run_dir, list(hydra_cfg.overrides.task), cfg.get("resume_from", "last"))
    else:
        record = run_record(cfg)
        hparams = record["hparams"]
        if rank_zero:
            write_config(run_dir, cfg)
            update_summary(run_dir / "summary.json", status="running", epochs_completed=0, **record)
    if rank_zero:
        log.info("run dir %s (config: config.yaml there)", shown(run_dir))
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    try:
        check_multirun_strategy(cfg)
        from transferlab.fit import fit

        best = fit(cfg, run_dir, ckpt_path, hparams)
    except BaseException as err:
        if not rank_zero:
            raise
        failed(err, cfg, run_dir, start)
    if rank_zero:
        log.info("%s", closing("run finished", outcome(run_dir, time.perf_counter() - start, None,
                                                     cfg.get("logger"))))
    return best


def cli() -> None:
    """The `transferlab-train` command."""
    refuse_bad_resume(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
