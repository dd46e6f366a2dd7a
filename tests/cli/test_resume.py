import pytest
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import torch

from tests.support.cli import BIN, TINY, console, run_cli, the_run_dir

pytestmark = pytest.mark.cli  # runs the installed commands, as a user would

EPOCHS = 5
ARGS = [
    *TINY, f"trainer.max_epochs={EPOCHS}", "trainer.limit_train_batches=4",
    "trainer.deterministic=true", "freeze=gradual", "freeze.head_epochs=1",
    "freeze.unfreeze_every=1",
]


def summary(run_dir):
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def weights(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if v.is_floating_point()}


def test_killed_run_resumes_in_its_own_dir_and_ends_like_an_uninterrupted_one(hymenoptera, tmp_path):
    """As a user does it: plain runs in the default layout, `resume=<run dir>` from the same
    directory; nothing passes hydra.run.dir."""
    data = f"data.root={hymenoptera}"
    straight, work = tmp_path / "straight", tmp_path / "work"
    result = run_cli("transferlab-train", *ARGS, data, cwd=straight)
    assert result.returncode == 0, console(result)[-3000:]
    straight = the_run_dir(straight)

    # Kill -9 in the middle of the gradual-unfreezing schedule, after two epochs.
    work.mkdir()
    proc = subprocess.Popen(
        [str(BIN / "transferlab-train"), *ARGS, data], cwd=work, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not list(work.glob("outputs/runs/*/*/summary.json")) or summary(
        the_run_dir(work)).get("epochs_completed", 0) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = the_run_dir(work)
    interrupted = summary(killed)
    assert interrupted["status"] == "running" and interrupted["epochs_completed"] < EPOCHS

    result = run_cli("transferlab-train", f"resume={killed.relative_to(work)}", cwd=work)
    assert result.returncode == 0, console(result)[-3000:]
    assert the_run_dir(work) == killed, "resume wrote outside its run dir"
    resumed = summary(killed)
    assert resumed["status"] == "completed"
    assert [h["epoch"] for h in resumed["history"]] == list(range(EPOCHS))
    assert f"run dir {killed.relative_to(work)}" in result.stdout

    # Same seed and config on the CPU: identical metrics and weights, killed or not.
    expected = summary(straight)
    for key in ("val/acc", "val/loss", "train/loss"):
        assert [h[key] for h in resumed["history"]] == [h[key] for h in expected["history"]], key
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_kills_in_the_middle_of_checkpoint_writes_always_leave_a_run_that_resumes(image_folder, tmp_path):
    """Each checkpoint is written slowly (tests/support/faults.py), and the run is killed -9
    while a new last.ckpt is half written over an existing one, three times over; every time
    the old last.ckpt is whole, the run resumes from it, and it ends completed."""
    args = [*TINY, "trainer.max_epochs=5", f"data.root={image_folder}", "data.image_size=32",
            "checkpoint_io._target_=tests.support.faults.SlowCheckpointIO", "hydra.run.dir=run"]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2])}
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    command = [str(BIN / "transferlab-train"), *args]
    for kill in range(3):
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 240
        while not (last.exists() and list(last.parent.glob(".last.ckpt.*.tmp"))):
            assert proc.poll() is None and time.monotonic() < deadline, f"no write to kill ({kill})"
            time.sleep(0.02)
        time.sleep(0.5)  # half way through the write
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        torch.load(last, weights_only=True)  # whole: the kill cost the new one only
        command = [str(BIN / "transferlab-train"), "resume=run"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert summary(tmp_path / "run")["status"] == "completed"
    assert [h["epoch"] for h in summary(tmp_path / "run")["history"]] == [0, 1, 2, 3, 4]
