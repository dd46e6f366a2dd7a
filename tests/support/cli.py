import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent

# A few batches at 64 px on the CPU: enough to exercise every part of a run.
TINY = [
    "init=he", "trainer=cpu", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=3", "data.image_size=64", "data.num_workers=0",
    "callbacks.progress_bar.refresh_rate=0",
]


def run_cli(
    command: str, *args: str, cwd: Path, timeout: int = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run an installed console script, as a user would: from `cwd`, output where it goes."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [str(BIN / command), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}),
    )


def console(result: subprocess.CompletedProcess) -> str:
    """What the user saw: Hydra logs to stdout, tracebacks and warnings go to stderr."""
    return result.stdout + result.stderr


def the_run_dir(cwd: Path) -> Path:
    """The one run dir a plain `transferlab-train` wrote under `cwd`, in the default layout."""
    runs = sorted((cwd / "outputs" / "runs").glob("*/*"))
    assert len(runs) == 1, f"expected one run dir under {cwd}/outputs/runs, found {runs}"
    return runs[0]
