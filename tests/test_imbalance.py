"""Imbalanced data: class weights, the balanced sampler, val/balanced_acc as monitor, early
stopping (and resuming a run that uses them)."""

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.modules import classifier_module
from transferlab.config import compose
from transferlab.cache.store import CachedViews
from transferlab.class_weights import decide_class_weights
from transferlab.data.classification import ImageFolderDataModule
from transferlab.data.sampling import ClassBalanced, EpochShuffle, mix_seeds
from transferlab.errors import ConfigError
from transferlab.fit import fit
from transferlab.summary import read_summary

TRAIN = {"cats": 9, "dogs": 3}  # 3:1, so a balanced epoch of 12 draws holds 6 of each


def imbalanced_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, counts in (("train", TRAIN), ("val", {"cats": 3, "dogs": 2})):
        for cls, n in counts.items():
            color = (220, 20, 20) if cls == "cats" else (20, 20, 220)
            for i in range(n):
                path = root / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = np.asarray(color) + rng.normal(0, 40, (30, 40, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
    return root


# -- class weights ------------------------------------------------------------------------------

def test_auto_weights_are_the_inverse_class_frequency_scaled_to_one_when_balanced():
    # 8 images, 2 classes: 8 / (2 * 6) and 8 / (2 * 2)
    assert decide_class_weights("auto", [6, 2], ["a", "b"]) == pytest.approx([2 / 3, 2.0])
    assert decide_class_weights("auto", [5, 5, 5], ["a", "b", "c"]) == [1.0, 1.0, 1.0]
    assert decide_class_weights("none", [6, 2], ["a", "b"]) is None
    assert decide_class_weights(None, [6, 2], ["a", "b"]) is None
    assert decide_class_weights([1, 2.5], [6, 2], ["a", "b"]) == [1.0, 2.5]


@pytest.mark.parametrize("setting, message", [
    ([1.0, 2.0, 3.0], r"model.class_weights has 3 weight\(s\) but the data has 2 classes"),
    ([1.0], r"model.class_weights has 1 weight\(s\) but the data has 2 classes"),
    ("inverse", "model.class_weights=inverse: use auto, none or a list"),
    ([1.0, -1.0], "weights are finite numbers >= 0"),
    ([0, 0], "not all zero"),
])
def test_bad_class_weights_name_the_key_and_the_class_count(setting, message):
    with pytest.raises(ConfigError, match=message):
        decide_class_weights(setting, [6, 2], ["a", "b"])


def test_the_loss_weighs_each_image_by_its_class_and_checkpoints_keep_their_keys():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    per_image = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(1)), math.log(2)]
    weights = [1.0, 3.0]  # the third image counts three times
    expected = (per_image[0] + per_image[1] + 3 * per_image[2]) / 5
    module = classifier_module(class_weights=weights)
    assert float(module.criterion(logits, y)) == pytest.approx(expected, rel=1e-6)
    assert float(classifier_module().criterion(logits, y)) == pytest.approx(sum(per_image) / 3, rel=1e-6)
    assert module.state_dict().keys() == classifier_module().state_dict().keys()
    assert module.hparams.class_weights == weights


# -- balanced sampler ---------------------------------------------------------------------------

@pytest.mark.parametrize("labels", [
    [0] * 9 + [1] * 3,
    [0] * 10 + [1] + [2] * 2,  # 13 draws over 3 classes: 5 / 4 / 4 in some order
    [1, 0] * 4,  # balanced already
    [0] * 7,  # one class
    [2] * 5 + [0] * 2,  # class ids with a gap
])
def test_balanced_sampler_draws_every_class_equally_often(labels):
    sampler = ClassBalanced(labels, seed=3, current_epoch=lambda: 5)
    keys = list(sampler)
    assert len(keys) == len(sampler) == len(labels)
    assert {epoch for _, epoch in keys} == {5}
    counts = Counter(labels[i] for i, _ in keys)
    assert counts.keys() == set(labels)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert keys == list(ClassBalanced(labels, seed=3, current_epoch=lambda: 5))


def test_balanced_sampler_follows_seed_and_epoch_and_reaches_every_image():
    labels = [0] * 9 + [1] * 3
    def draw(seed, epoch):
        return [i for i, _ in ClassBalanced(labels, seed, current_epoch=lambda: epoch)]
    assert draw(0, 1) != draw(0, 2)
    assert draw(0, 1) != draw(1, 1)
    assert set().union(*(draw(0, e) for e in range(10))) == set(range(12))
    # The shuffle sampler's permutations are unchanged by the shared base class.
    g = torch.Generator().manual_seed(mix_seeds(7, 3))
    assert [i for i, _ in EpochShuffle(6, 7, lambda: 3)] == torch.randperm(6, generator=g).tolist()


@pytest.mark.parametrize("sampler, expected", [("shuffle", {0: 9, 1: 3}), ("balanced", {0: 6, 1: 6})])
def test_train_loader_serves_the_sampler_on_images_and_on_cached_features(tmp_path, sampler, expected):
    data = ImageFolderDataModule(str(imbalanced_folder(tmp_path / "data")), image_size=32,
                                 batch_size=4, num_workers=0, sampler=sampler)
    data.setup("fit")
    assert data.train_class_counts() == [9, 3]
    assert Counter(int(label) for batch in data.train_dataloader() for label in batch[1]) == expected
    labels = torch.tensor([label for _, label in data.train_set.samples])
    rest = torch.nn.Identity()
    data.serve({"train": CachedViews(torch.randn(1, 12, 8), labels, rest),
                "val": CachedViews(torch.randn(1, 5, 8), torch.zeros(5, dtype=torch.long), rest)})
    assert Counter(int(label) for batch in data.train_dataloader() for label in batch[1]) == expected


def test_an_unknown_sampler_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.sampler=weighted: choose one of shuffle, balanced"):
        ImageFolderDataModule(str(tmp_path), image_size=32, sampler="weighted")


# -- fits: monitor, early stopping, resume --------------------------------------------------------

def config(run_dir: Path, data: Path, *extra: str):
    run_dir.mkdir(parents=True, exist_ok=True)  # Hydra makes it for a real run
    return compose([
        "init=he", "trainer=cpu", "logger=none", "trainer.deterministic=true", f"data.root={data}",
        "data.image_size=32", "data.num_workers=0", "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ], run_dir)


def test_a_monitor_the_module_does_not_log_stops_the_run_before_training(tmp_path):
    data = imbalanced_folder(tmp_path / "data")
    with pytest.raises(ConfigError, match="monitor=val/balanced_accuracy is not a metric a "
                                          "classification run logs; choose one of val/acc, val/balanced_acc"):
        fit(config(tmp_path / "run", data, "monitor=val/balanced_accuracy"), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_early_stopping_follows_the_monitor_of_the_task(tmp_path):
    assert config(tmp_path, tmp_path, "callbacks=early_stopping").callbacks.early_stopping.monitor == "val/acc"
    cfg = config(tmp_path, tmp_path, "callbacks=early_stopping", "task=segmentation")
    assert (cfg.callbacks.early_stopping.monitor, cfg.callbacks.early_stopping.mode) == ("val/dice", "max")
    assert "model_checkpoint" in cfg.callbacks  # the default callbacks stay


def weights(run_dir: Path) -> dict:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return state["hyper_parameters"], {k: v for k, v in state["state_dict"].items() if v.is_floating_point()}


def test_a_stopped_early_balanced_weighted_run_resumes_bit_identically(tmp_path):
    """min_delta=10 on an accuracy: only the first epoch counts as an improvement, so patience=2
    stops after epoch 2 of 6, wherever the metric goes. The resumed run must stop there too:
    without the checkpointed early-stopping state it would run to epoch 4."""
    data = imbalanced_folder(tmp_path / "data")
    settings = ["data.sampler=balanced", "model.class_weights=auto", "monitor=val/balanced_acc",
                "callbacks=early_stopping", "callbacks.early_stopping.patience=2",
                "callbacks.early_stopping.min_delta=10"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fit(config(straight, data, *settings, "trainer.max_epochs=6"), straight)
    fit(config(resumed, data, *settings, "trainer.max_epochs=2"), resumed)  # "killed" after 2
    assert read_summary(resumed / "summary.json")["stopped_epoch"] is None
    fit(config(resumed, data, *settings, "trainer.max_epochs=6"), resumed,
        ckpt_path=resumed / "checkpoints" / "last.ckpt")

    expected, got = read_summary(straight / "summary.json"), read_summary(resumed / "summary.json")
    assert expected["stopped_epoch"] == got["stopped_epoch"] == 2
    assert [h["epoch"] for h in got["history"]] == [0, 1, 2]
    for key in ("val/balanced_acc", "val/acc", "val/loss", "train/loss"):
        assert [h[key] for h in got["history"]] == [h[key] for h in expected["history"]], key
    (hparams, a), (_, b) = weights(straight), weights(resumed)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert hparams["class_weights"] == pytest.approx([12 / (2 * 9), 12 / (2 * 3)])
