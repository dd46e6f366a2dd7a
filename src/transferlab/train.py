"""`transferlab-train`: the Hydra app. It imports only Hydra at start, so `--help`, `--cfg job`
and config errors answer at once; torch and Lightning load when a run starts (`transferlab.fit`).
"""

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from transferlab.errors import ConfigError, DataError
from transferlab.summary import read_summary, update_summary

log = logging.getLogger("transferlab")

# Errors whose message is the whole story: a single run prints it and exits 1, no traceback.
USER_ERRORS = (ConfigError, DataError, FloatingPointError)


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


OmegaConf.register_new_resolver(
    "resume_dir", lambda resume, fresh: resume or fresh, replace=True
)
OmegaConf.register_new_resolver(
    "unless_resuming", lambda resume, value: None if resume else value, replace=True
)


def config_dir() -> str:
    """The configs ship inside the wheel; an editable install reads the repo's `conf/`."""
    packaged = Path(__file__).parent / "conf"
    return str(packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf")


def process_rank() -> int:
    """This process's global rank, from the variables DDP launchers and SLURM set (Lightning reads
    the same ones, but importing it here would cost the fast answers)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def shown(path: Path) -> str:
    """A path as the user would type it: relative to where they ran the command, if inside."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def finished_run(cfg: DictConfig) -> Path:
    """The `run=` of transferlab-predict / -eval / -export: checked before torch loads, so a
    mistyped run dir answers at once."""
    if OmegaConf.is_missing(cfg, "run"):
        raise ConfigError("run=<run dir> is missing: the dir transferlab-train wrote, "
                          "e.g. run=outputs/runs/<date>/<time>")
    run_dir = Path(cfg.run)
    if not run_dir.is_dir():
        raise ConfigError(f"run={run_dir}: the run dir does not exist")
    if cfg.get("checkpoint", "best") in ("best", "last") and not (run_dir / "checkpoints").is_dir():
        raise ConfigError(
            f"run={run_dir} has no checkpoints: {run_dir / 'checkpoints'} does not exist. Pass the "
            "dir of a run that finished an epoch (checkpoints/best-epochNNN.ckpt, last.ckpt), or "
            "checkpoint=<file.ckpt>"
        )
    return run_dir


def restore_run(run_dir: Path) -> tuple[DictConfig, Path]:
    """The saved config and last checkpoint of a run to continue."""
    others = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    if others:
        raise ConfigError(
            f"resume restores the run's saved config; drop the other overrides {others} "
            "(start a new run to change settings)"
        )
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"resume={run_dir}: no config.yaml there, so it is not a transferlab run dir")
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ConfigError(f"resume={run_dir}: {last} does not exist; the run never finished an epoch")
    log.info("resuming %s from %s", shown(run_dir), shown(last))
    return OmegaConf.load(run_dir / "config.yaml"), last


def outcome(run_dir: Path, seconds: float, reason: str | None) -> str:
    """The block that ends every run: where things went and how it went."""
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
    test_metric = str(monitor).replace("val/", "test/", 1)
    if test_metric in tested:
        lines.append(("test", f"{test_metric} {tested[test_metric]:.4f} at that checkpoint"))
    lines.append(("time", f"{seconds:.0f} s, {summary.get('epochs_completed', 0)} epoch(s)"))
    if (run_dir / "tensorboard").is_dir():
        lines.append(("view", f"tensorboard --logdir {shown(run_dir)}"))
    return "\n".join(f"  {k:<10}  {v}" for k, v in lines)


def group_choices() -> dict:
    """The option chosen in each of transferlab's config groups (Hydra's own left out)."""
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}


def swept_hparams(cfg: DictConfig) -> dict:
    """The settings worth comparing across runs, by group name (`freeze`, `init`, ...): the
    group choices, the command-line overrides, and the values actually used."""
    hc = HydraConfig.get()
    params = group_choices()
    for override in hc.overrides.task:
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    # `backbone.name=x` changes the network without changing the group choice.
    params |= {"seed": cfg.seed, "backbone": cfg.backbone.name, "lr": cfg.optimizer.lr}
    return {k: str(v) if v is None else v for k, v in params.items()}


def run_record(cfg: DictConfig) -> dict:
    """What summary.json says of a run from its first moment on, whatever happens next: how it
    was asked for (overrides, group choices, the settings worth comparing) and its monitor. The
    sweep report reads nothing else about a job."""
    hc = HydraConfig.get()
    return {
        "monitor": cfg.get("monitor"), "monitor_mode": cfg.get("monitor_mode"),
        "overrides": list(hc.overrides.task),
        "choices": group_choices(),
        "hparams": swept_hparams(cfg),
    }


def stop(err: BaseException, mode: RunMode) -> None:
    """A single run ends on a user error with its message alone: a traceback would bury it. A
    sweep re-raises, so Hydra records the failed job and goes on with the next."""
    if isinstance(err, USER_ERRORS) and mode == RunMode.RUN:
        sys.exit(1)
    raise err


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    start = time.perf_counter()
    rank_zero = process_rank() == 0
    ckpt_path = None
    if cfg.get("resume"):
        try:
            cfg, ckpt_path = restore_run(run_dir)
        except ConfigError as err:  # a refused resume leaves the run's record as it was
            log.error("%s", err)
            stop(err, hydra_cfg.mode)
    elif rank_zero:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        update_summary(run_dir / "summary.json", status="running", epochs_completed=0,
                       **run_record(cfg))
    if rank_zero:
        log.info("run dir %s (config: config.yaml there)", shown(run_dir))
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    try:
        from transferlab.fit import fit

        best = fit(cfg, run_dir, ckpt_path)
    except BaseException as err:
        if not rank_zero:
            raise
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
        update_summary(run_dir / "summary.json", monitor=cfg.get("monitor"),
                       monitor_mode=cfg.get("monitor_mode"), status="failed", error=reason)
        log.info("run failed:\n%s", outcome(run_dir, time.perf_counter() - start, reason))
        stop(err, hydra_cfg.mode)
    if rank_zero:
        log.info("run finished:\n%s", outcome(run_dir, time.perf_counter() - start, None))
    return best


def cli() -> None:
    """The `transferlab-train` command."""
    refuse_bad_resume(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
