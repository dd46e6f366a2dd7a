"""`transferlab-train` run as a user runs it: from a fresh directory, no hydra.run.dir."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.support.cli import TINY, console, run_cli, the_run_dir
from transferlab.modules.classification import ClassificationModule

pytestmark = pytest.mark.cli  # runs the installed commands, as a user would


def test_train_on_real_ants_bees(hymenoptera, tmp_path):
    result = run_cli(
        "transferlab-train", *TINY, f"data.root={hymenoptera}", "freeze=gradual",
        "freeze.head_epochs=1", cwd=tmp_path,
    )
    assert result.returncode == 0, console(result)[-3000:]
    run_dir = the_run_dir(tmp_path)
    shown = run_dir.relative_to(tmp_path)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["monitor"] == "val/acc"
    assert summary["monitor_mode"] == "max" and summary["epochs_completed"] == 2
    accs = [h["val/acc"] for h in summary["history"]]
    assert 0.0 <= summary["best"] <= 1.0 and summary["best"] == max(accs)
    assert summary["best_epoch"] == accs.index(max(accs))
    assert 0 < summary["params_trainable"] < summary["params_total"]

    ckpts = {p.name for p in (run_dir / "checkpoints").iterdir()}
    best = f"best-epoch{summary['best_epoch']:03d}.ckpt"
    assert {"last.ckpt", best} <= ckpts
    assert Path(summary["best_checkpoint"]) == run_dir / "checkpoints" / best
    model = ClassificationModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert model.hparams.class_names == ["ants", "bees"]

    # The console says where things went, at the start and in a closing block, and no more.
    out = console(result)
    assert f"run dir {shown}" in out
    closing = out[out.index("run finished:"):]
    for line in ("status      completed", f"best        val/acc {summary['best']:.4f} at epoch",
                 f"checkpoint  {shown}/checkpoints/{best}", f"view        tensorboard --logdir {shown}"):
        assert line in closing, closing
    for noise in ("_target_", "💡 Tip", "Total Flops", "FutureWarning", "LeafSpec", "Seed set to"):
        assert noise not in out, noise

    assert (run_dir / "config.yaml").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    log = (run_dir / "train.log").read_text()
    assert "stages (GradualUnfreezing" in log and "epoch 1: unfroze layer4" in log
    assert "run finished:" in log

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "hp/best",
            "lr-SGD/head", "lr-SGD/layer4", "params/trainable"} <= scalars
    assert "val/confusion_matrix" in events.Tags()["images"]
    assert events.Scalars("hp/best")[-1].value == summary["best"]


@pytest.mark.parametrize("args,message", [
    (["data.root={tmp}/nowhere", "data.download_url=null"], "{tmp}/nowhere/train"),
    (["data.root={data}", "model.num_classes=5"], "model.num_classes=5 but"),
    (["data.root={data}", "+trainer.max_epoch=1"], "trainer.max_epoch (did you mean max_epochs"),
    # A constructor's refusal, which Hydra wraps: the refusal is the reason, not the wrapper.
    (["data.root={data}", "backbone.pre_logits=drop"], "ConfigError: backbone.pre_logits=drop: resnet18"),
])
def test_failure_before_training_is_recorded_and_explained(hymenoptera, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, data=hymenoptera) for a in args]
    message = message.format(tmp=tmp_path)
    result = run_cli("transferlab-train", *TINY, *args, cwd=tmp_path)
    assert result.returncode == 1
    run_dir = the_run_dir(tmp_path)
    out = console(result)
    closing = out[out.index("run failed:"):]
    assert "status      failed" in closing and message in closing
    assert f"log         {run_dir.relative_to(tmp_path)}/train.log" in closing
    assert "Traceback" not in out and "Error executing job" not in out  # the message is the whole story
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and message in summary["error"]
    # How the run was asked for is on record even so: the sweep report reads only this file.
    assert (summary["monitor"], summary["monitor_mode"]) == ("val/acc", "max")
    assert summary["overrides"] == [*TINY, *args] and summary["choices"]["freeze"] == "full"
    assert summary["hparams"]["backbone"] == "resnet18"
    assert not (run_dir / "checkpoints").exists()


def test_every_bad_file_is_listed_in_one_run(image_folder, tmp_path):
    bad = [image_folder / "train" / "cats" / "broken.jpg", image_folder / "val" / "dogs" / "empty.png"]
    bad[0].write_text("not a picture")
    bad[1].write_bytes(b"")
    result = run_cli("transferlab-train", *TINY, f"data.root={image_folder}", cwd=tmp_path / "work")
    assert result.returncode == 1
    assert "2 image file(s) cannot be decoded" in result.stdout
    listed = (the_run_dir(tmp_path / "work") / "bad_files.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == sorted(map(str, bad))


def test_the_composed_config_is_logged_on_request(tmp_path):
    result = run_cli("transferlab-train", *TINY, f"data.root={tmp_path}/nowhere",
                     "data.download_url=null", "hydra.verbose=transferlab", cwd=tmp_path)
    assert "config:" in result.stdout and "_target_: transferlab.models.init.HeInit" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trainer_without_a_gpu_names_the_fix(hymenoptera, tmp_path):
    result = run_cli("transferlab-train", *TINY, "trainer=gpu", f"data.root={hymenoptera}",
                     cwd=tmp_path)
    assert result.returncode == 1
    assert "no CUDA GPU" in result.stdout and "trainer=cpu" in result.stdout


def test_resume_of_a_missing_dir_says_so_and_creates_nothing(tmp_path):
    result = run_cli("transferlab-train", "resume=outputs/runs/typo", cwd=tmp_path)
    assert result.returncode != 0
    assert "resume=outputs/runs/typo: does not exist" in console(result)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_resume_leaves_the_run_as_it_was(tmp_path):
    run = tmp_path / "outputs" / "runs" / "2026-01-01" / "00-00-00"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "summary.json").write_text('{"status": "completed"}')
    result = run_cli("transferlab-train", f"resume={run}", "trainer.max_epochs=50", cwd=tmp_path)
    assert result.returncode == 1
    assert "drop the other overrides ['trainer.max_epochs=50']" in result.stdout
    assert json.loads((run / "summary.json").read_text()) == {"status": "completed"}


@pytest.mark.parametrize("command,args", [
    ("train", ["--help"]), ("train", ["--cfg", "job"]), ("train", ["freeze=nonsense"]),
    ("train", ["no_such_key=1"]), ("train", ["resume=outputs/nowhere"]),
    ("predict", ["--help"]), ("predict", ["run=x"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_answers_without_loading_torch(tmp_path, command, args):
    """--help, --cfg and config errors answer in about a second because only Hydra is imported
    (torch, torchvision and Lightning take ~10 s to import on a small CPU)."""
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('heavy modules:', sorted(\n"
        "    m for m in ('torch', 'torchvision', 'lightning') if m in sys.modules)))\n"
        f"sys.argv = ['transferlab-{command}', *{args!r}]\n"
        f"from transferlab.cli.{command} import {'cli' if command == 'train' else 'main'} as entry\n"
        "entry()\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert "heavy modules: []" in result.stdout, console(result)[-2000:]


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_help_says_what_the_command_takes_not_the_training_groups(tmp_path, command):
    result = subprocess.run([sys.executable, "-m", f"transferlab.cli.{command}", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith(f"transferlab-{command}: "), result.stdout[:500]
    assert "run          the run dir of transferlab-train (required)" in result.stdout
    assert "augment:" not in result.stdout  # Hydra's default help lists every group of conf/


def test_ddp_inside_a_multirun_is_refused_with_a_clear_message(tmp_path):
    result = run_cli(
        "transferlab-train", "-m", *TINY, "trainer=ddp", "trainer.accelerator=cpu", "seed=0,1",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "cannot run inside a Hydra multirun" in console(result)
    assert "ddp_spawn" in console(result)


def test_ddp_on_two_cpu_processes_writes_one_run_with_ranks_in_sync(hymenoptera, tmp_path):
    dump = tmp_path / "ranks"
    result = run_cli(
        "transferlab-train", *TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        f"data.root={hymenoptera}", "data.image_size=32",
        # layer4 thaws after the model is wrapped: its gradients must still be all-reduced
        "freeze=gradual", "freeze.head_epochs=1", "freeze.unfreeze_every=1",
        "+callbacks.rank_weights._target_=tests.support.rank_weights.SaveRankWeights",
        f"+callbacks.rank_weights.dirpath={dump}",
        cwd=tmp_path / "work", env={"PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert result.returncode == 0, console(result)[-3000:]
    run_dir = the_run_dir(tmp_path / "work")  # the second rank did not start a run of its own
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert len(list((run_dir / "tensorboard").glob("events.*"))) == 1
    assert console(result).count("run finished:") == 1

    rank0, rank1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks drifted apart"
    start = torch.load(run_dir / "checkpoints" / "best-epoch000.ckpt", weights_only=True)
    layer4 = [k for k in rank0 if k.startswith("net.layer4.") and k.endswith("weight")]
    assert any(not torch.equal(rank0[k], start["state_dict"][k]) for k in layer4)
