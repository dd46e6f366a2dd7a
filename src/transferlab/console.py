"""What the user's console shows: paths as they would type them, and the libraries' messages
that say something about the run, once each (`quiet_libraries`, called by every command once torch
and Lightning are imported)."""

import logging
import os
import warnings
from pathlib import Path


def shown(path: str | os.PathLike) -> str:
    """A path as the user would type it: relative to where they ran the command, if inside."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _DropLightningAdverts(logging.Filter):
    """Lightning's product tip and its TPU line say nothing about this run."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("💡 Tip:") or message.startswith("TPU available"))


def quiet_libraries() -> None:
    # Frozen stages sit in eval mode on purpose (BatchNorm statistics stay put, Dropout is off).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
    # Lightning's own pytree helper uses a class torch deprecated: nothing a user can act on.
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningAdverts) for f in logger.filters):
            logger.addFilter(_DropLightningAdverts())
    if logging.getLogger().handlers:
        # `import lightning` gives its logger a console handler of its own; the root logger that
        # Hydra set up already prints (and writes the log file), so each line came twice.
        logging.getLogger("lightning").handlers.clear()
