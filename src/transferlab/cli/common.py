"""What every transferlab command shares: paths as the user typed them, the check of a finished
run dir, one policy for user errors, one closing block. Imports Hydra and the standard library
only, so `--help` and mistyped arguments answer before torch loads."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from transferlab.config import config_dir
from transferlab.console import shown
from transferlab.errors import ConfigError, DataError

__all__ = ["USER_ERRORS", "closing", "config_dir", "finished_run", "shown", "stop", "unwrapped", "user_errors"]

log = logging.getLogger("transferlab")
# A log file on a full disk: its failed writes are not the story (Python's production setting:
# no traceback per failed log line).
logging.raiseExceptions = False

# Errors whose message is the whole story: a command prints it and exits 1, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, FloatingPointError)


def finished_run(cfg: DictConfig) -> Path:
    """The `run=` of transferlab-predict / -eval / -export, checked before torch loads, so a
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


def closing(title: str, lines: list[tuple[str, str]], width: int = 10) -> str:
    """The block that ends every command: `title:`, then one `key  value` line each, the values
    aligned at `width` (further when a key is longer), the same column in every command."""
    width = max([width, *(len(key) for key, _ in lines)])
    return f"{title}:\n" + "\n".join(f"  {key:<{width}}  {value}" for key, value in lines)


def stop(err: BaseException, mode: RunMode = RunMode.RUN,
         also: tuple[type[BaseException], ...] = ()) -> NoReturn:
    """A user error ends a single command with its message alone (exit 1): a traceback would
    bury it. In a sweep (-m) it is raised again, so Hydra records the failed job and goes on."""
    if isinstance(err, (*USER_ERRORS, *also)) and mode == RunMode.RUN:
        sys.exit(1)
    raise err


def unwrapped(err: BaseException, also: tuple[type[BaseException], ...] = ()) -> BaseException:
    """A config's constructor that refuses its arguments: Hydra wraps the refusal, whose own
    message is the story."""
    cause = err.__cause__
    if isinstance(err, InstantiationException) and isinstance(cause, (*USER_ERRORS, *also)):
        return cause
    return err


@contextmanager
def user_errors(mode: RunMode = RunMode.RUN,
                also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Inside the block, a user error (or one of `also`) is logged as one line and `stop`s."""
    try:
        yield
    except (*USER_ERRORS, *also, InstantiationException) as raised:
        err = unwrapped(raised, also)
        if not isinstance(err, (*USER_ERRORS, *also)):
            raise
        log.error("%s", err)
        log.debug("where it failed", exc_info=err)
        stop(err, mode, also)
