import json
from pathlib import Path

import pytest
import torch

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli import TINY, run_cli
from transferlab.modules.classification import ClassificationModule


def test_train_on_real_ants_bees(hymenoptera, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        "transferlab-train", *TINY, f"data.root={hymenoptera}", f"hydra.run.dir={run_dir}",
        "freeze=gradual", "freeze.head_epochs=1", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["monitor"] == "val/acc"
    assert summary["epochs_completed"] == 2
    accs = [h["val/acc"] for h in summary["history"]]
    assert 0.0 <= summary["best"] <= 1.0 and summary["best"] == max(accs)
    assert summary["best_epoch"] == accs.index(max(accs))
    assert 0 < summary["params_trainable"] < summary["params_total"]

    ckpts = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-epoch") for n in ckpts)
    model = ClassificationModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert model.hparams.class_names == ["ants", "bees"]

    assert (run_dir / ".hydra" / "config.yaml").is_file()
    log = (run_dir / "train.log").read_text()
    assert "stages (GradualUnfreezing" in log and "epoch 1: unfroze layer4" in log

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "hp/best",
            "lr-SGD/head", "lr-SGD/layer4", "params/trainable"} <= scalars
    assert "val/confusion_matrix" in events.Tags()["images"]
    assert events.Scalars("hp/best")[-1].value == summary["best"]


@pytest.mark.parametrize("args,message", [
    (["data.root={tmp}/nowhere", "data.download_url=null"], "{tmp}/nowhere/train"),
    (["data.root={data}", "model.num_classes=5"], "model.num_classes=5 but"),
])
def test_failure_before_training_is_recorded(hymenoptera, tmp_path, args, message):
    run_dir = tmp_path / "run"
    args = [a.format(tmp=tmp_path, data=hymenoptera) for a in args]
    result = run_cli("transferlab-train", *TINY, *args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode != 0
    assert message.format(tmp=tmp_path) in result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and message.format(tmp=tmp_path) in summary["error"]
    assert not (run_dir / "checkpoints").exists()


def test_ddp_inside_a_multirun_is_refused_with_a_clear_message(tmp_path):
    result = run_cli(
        "transferlab-train", "-m", *TINY, "trainer=ddp", "trainer.accelerator=cpu", "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "cannot run inside a Hydra multirun" in result.stderr
    assert "ddp_spawn" in result.stderr


def test_ddp_on_two_cpu_processes_writes_one_run_with_ranks_in_sync(hymenoptera, tmp_path):
    run_dir, dump = tmp_path / "run", tmp_path / "ranks"
    result = run_cli(
        "transferlab-train", *TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        f"data.root={hymenoptera}", f"hydra.run.dir={run_dir}", "data.image_size=32",
        # layer4 thaws after the model is wrapped: its gradients must still be all-reduced
        "freeze=gradual", "freeze.head_epochs=1", "freeze.unfreeze_every=1",
        "+callbacks.rank_weights._target_=rank_weights.SaveRankWeights",
        f"+callbacks.rank_weights.dirpath={dump}",
        cwd=tmp_path, env={"PYTHONPATH": str(Path(__file__).parent)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert len(list((run_dir / "tensorboard").glob("events.*"))) == 1
    assert not list(tmp_path.glob("outputs"))  # the second rank did not start a run of its own

    rank0, rank1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "ranks drifted apart"
    start = torch.load(run_dir / "checkpoints" / "best-epoch000.ckpt", weights_only=True)
    layer4 = [k for k in rank0 if k.startswith("net.layer4.") and k.endswith("weight")]
    assert any(not torch.equal(rank0[k], start["state_dict"][k]) for k in layer4)
