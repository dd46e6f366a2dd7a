"""transferlab-export: ONNX and TorchScript files that give PyTorch's probabilities, at other batch
sizes (and, for the U-Net, other heights and widths) than the export traced, plus preprocess.json.

Each export runs once per module (in-process); the tests read its files and run them themselves.
The classification fixture's logits are ~1e10 (He init, two epochs on solid colours), so its
probabilities are exactly 0 and 1 and any export would match them: `tame_run` copies the run with
its head scaled down, so the probabilities are not saturated and a parity check means something.
"""

import json
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tests.support.cli import console, run_cli

from transferlab.data.classification import resize_side
from transferlab.errors import ConfigError
from transferlab.export import EXAMPLE_BATCH, ExportCheckError, ExportError, compare, export
from transferlab.inference import load

# One worker runs the module: its module-scoped runs are made once.
pytestmark = [pytest.mark.cli, pytest.mark.xdist_group("export")]

TOLERANCE = 1e-4


def tame_run(run: Path, dest: Path, data_root: str | None) -> tuple[Path, Path]:
    """A copy of `run` (config.yaml with data.root replaced, one checkpoint) whose classifier head
    gives logits within about +-1 on random images; returns the run dir and the checkpoint."""
    predictor = load(run, "best", "cpu")
    with torch.inference_mode():
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        logits = predictor.module.net(x)
    # Logits of random images differ by ~1e9 around a common ~1e10 per class: centre and shrink.
    centre = logits.mean(0)
    scale = 1.0 / float((logits - centre).abs().max())
    source = torch.load(predictor.checkpoint, map_location="cpu", weights_only=True)
    head = "net." + predictor.module.backbone.head_path
    state = source["state_dict"]
    state[f"{head}.weight"] = state[f"{head}.weight"] * scale
    state[f"{head}.bias"] = (state[f"{head}.bias"] - centre) * scale
    checkpoint = dest / "checkpoints" / "tamed.ckpt"
    checkpoint.parent.mkdir(parents=True)
    source.pop("optimizer_states", None)  # not needed to load, half the file
    torch.save(source, checkpoint)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["root"] = data_root
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    return dest, checkpoint


@pytest.fixture(scope="module")
def tamed(classification_run, tmp_path_factory) -> tuple[Path, Path]:
    """The classification run, its head tamed, its data gone (data.root names no folder)."""
    dest = tmp_path_factory.mktemp("tamed_run") / "run"
    return tame_run(classification_run, dest, str(dest / "data-gone"))


def val_images(run: Path) -> Path:
    return Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"]) / "val"


@pytest.fixture(scope="module")
def onnx_classification(tamed, classification_run, tmp_path_factory) -> dict:
    run, checkpoint = tamed
    return export(run, "onnx", checkpoint=str(checkpoint), out=tmp_path_factory.mktemp("onnx_c"),
                  check_images=str(val_images(classification_run)), check_count=3, preprocess="inside")


@pytest.fixture(scope="module")
def onnx_segmentation(segmentation_run, tmp_path_factory) -> dict:
    return export(segmentation_run, "onnx", out=tmp_path_factory.mktemp("onnx_s"))


@pytest.fixture(scope="module")
def torchscript_segmentation(segmentation_run, tmp_path_factory) -> dict:
    return export(segmentation_run, "torchscript", checkpoint="last",
                  out=tmp_path_factory.mktemp("ts_s"))


def run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    return session.run(["probabilities"], {"images": x.numpy()})[0]


def run_torchscript(path: Path, x: torch.Tensor) -> np.ndarray:
    with pytest.warns(FutureWarning, match="deprecated"):  # torch.jit.load, in current torch
        model = torch.jit.load(str(path))
    with torch.inference_mode():
        return model(x).numpy()


def expected(predictor, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return predictor.module.predict_step(x, 0).numpy()


def assert_matches(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE
    assert ((want > 0.01) & (want < 0.99)).any(), "saturated probabilities: the check would be vacuous"


def test_onnx_classification(onnx_classification, tamed):
    done = onnx_classification
    assert done["model"].name == "model.onnx" and done["model"].is_file()
    assert done["max_abs_diff"] <= TOLERANCE and done["opset"] >= 18
    assert "3 image(s)" in done["checked_on"]  # check_images= given: real images, not random
    assert [label for label, _ in done["diffs"]] == ["batch 3 at 32x32", "batch 1 at 32x32"]
    # Dynamic batch: 5 is neither the traced batch (2) nor one the export checked.
    predictor = load(tamed[0], str(tamed[1]), "cpu")
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert_matches(run_onnx(done["model"], x), expected(predictor, x))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_segmentation(fmt, onnx_segmentation, torchscript_segmentation, segmentation_run):
    done = onnx_segmentation if fmt == "onnx" else torchscript_segmentation
    assert done["max_abs_diff"] <= TOLERANCE
    assert done["checked_on"].startswith("3 image(s): the run's val images")
    assert [label for label, _ in done["diffs"]] == [
        "batch 3 at 32x32", "batch 1 at 32x32", "batch 3 at 48x40"]
    predictor = load(segmentation_run, "last" if fmt == "torchscript" else "best", "cpu")
    runner = run_onnx if fmt == "onnx" else run_torchscript
    # Dynamic batch, height and width: none a multiple of 16 nor what the export traced.
    x = torch.randn(EXAMPLE_BATCH + 1, 3, 40, 36, generator=torch.Generator().manual_seed(2))
    assert_matches(runner(done["model"], x), expected(predictor, x))


def test_preprocess_json(onnx_classification, onnx_segmentation, torchscript_segmentation, tamed,
                         segmentation_run):
    for done, run, checkpoint in ((onnx_classification, tamed[0], str(tamed[1])),
                                  (onnx_segmentation, segmentation_run, "best"),
                                  (torchscript_segmentation, segmentation_run, "last")):
        predictor = load(run, checkpoint, "cpu")
        notes = json.loads(done["preprocess"].read_text())
        assert {k: notes[k] for k in predictor.preprocess} == predictor.preprocess
        assert notes["class_names"] == predictor.class_names
        assert notes["model"]["file"] == done["model"].name
        assert notes["model"]["checkpoint"] == predictor.checkpoint.name
    c = json.loads(onnx_classification["preprocess"].read_text())
    assert c["resize"]["shorter_side"] == resize_side(32)  # what classification.eval_transform uses
    assert c["resize"]["center_crop"] == [32, 32]
    assert c["input"]["shape"] == ["batch", 3, 32, 32] and c["input"]["name"] == "images"
    assert c["output"]["shape"] == ["batch", 2] and "probabilities" in c["output"]["meaning"]
    assert c["model"]["opset"] == onnx_classification["opset"]
    s = json.loads(onnx_segmentation["preprocess"].read_text())
    assert s["resize"]["size"] == [32, 32] and "center_crop" not in s["resize"]
    assert s["input"]["shape"] == ["batch", 3, "height", "width"]
    assert s["output"]["shape"] == ["batch", 2, "height", "width"]
    assert "multiples of 16" in s["input"]["height_width"]
    assert "argmax" in s["postprocess"] and "original height x width" in s["postprocess"]
    assert "opset" not in json.loads(torchscript_segmentation["preprocess"].read_text())["model"]


def test_onnx_needs_its_packages(monkeypatch, segmentation_run, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(ConfigError, match=r"onnxruntime.*pip install 'transferlab\[export\]'"):
        export(segmentation_run, "onnx", out=tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_run_without_checkpoints(segmentation_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(segmentation_run / "config.yaml", run)
    with pytest.raises(ConfigError, match=re.escape(str(run / "checkpoints" / "last.ckpt"))):
        export(run, "torchscript", checkpoint="last")
    assert not (run / "export").exists()


def test_check_fails_above_tolerance(tmp_path):
    module = SimpleNamespace(predict_step=lambda x, _: x.softmax(dim=1))
    x = torch.randn(2, 3, 4, 4)
    off = lambda batch: batch.softmax(dim=1).numpy() + 1e-3  # noqa: E731
    with pytest.raises(ExportCheckError, match=r"max abs difference.* 1\.00e-03 > tolerance=0\.0001"):
        compare(SimpleNamespace(module=module), off, [("batch 2", x)], TOLERANCE, tmp_path / "m.onnx")


def test_cli_torchscript(tamed, tmp_path):
    """The console script, on the tamed run whose data is gone: random tensors, said so."""
    run, checkpoint = tamed
    out = tmp_path / "export"
    result = run_cli("transferlab-export", f"run={run}", "format=torchscript",
                     f"checkpoint={checkpoint}", f"out={out}", cwd=tmp_path)
    text = console(result)
    assert result.returncode == 0, text[-3000:]
    assert "checking on random tensors instead" in text and "data-gone" in text
    assert "matches PyTorch" in text and "FutureWarning" not in text
    assert (out / "model.pt").is_file() and (out / "preprocess.json").is_file()
    predictor = load(run, str(checkpoint), "cpu")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert_matches(run_torchscript(out / "model.pt", x), expected(predictor, x))


def test_exporter_failure_is_one_message(monkeypatch, tamed, tmp_path):
    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate\nlong details")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(ExportError, match=r"ONNX exporter failed.*aten::frobnicate \(format=torchscript"):
        export(tamed[0], "onnx", checkpoint=str(tamed[1]), out=tmp_path)


# -- a client that knows only preprocess.json -----------------------------------------------------


def client_input(image: Image.Image, notes: dict) -> np.ndarray:
    """preprocess.json's steps, read by someone who never saw torchvision: Pillow and numpy only."""
    image = image.convert("RGB")
    resize = notes["resize"]
    shorter, (crop_h, crop_w) = resize["shorter_side"], resize["center_crop"]
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(shorter * long / short)  # "the integer part, not rounded"
    new_w, new_h = (shorter, new_long) if width <= height else (new_long, shorter)
    image = image.resize((new_w, new_h), resample=Image.BILINEAR)
    top, left = round((new_h - crop_h) / 2), round((new_w - crop_w) / 2)  # halves to even
    pixels = np.asarray(image, dtype=np.float32)[top:top + crop_h, left:left + crop_w]
    pixels = (pixels / 255 - np.asarray(notes["mean"], np.float32)) / np.asarray(notes["std"], np.float32)
    return pixels.transpose(2, 0, 1).astype(np.float32)


@pytest.mark.parametrize("size", [(97, 61), (61, 97), (333, 250), (250, 333), (80, 80), (101, 64)])
def test_a_client_following_preprocess_json_matches_transferlab_predict(onnx_classification, tamed,
                                                                        tmp_path, size):
    """Odd sizes and aspect ratios, both orientations: a crop offset that rounds, a longer side
    that truncates. The same probabilities as transferlab's own predictions, to 1e-5."""
    import onnxruntime

    run, checkpoint = tamed
    notes = json.loads(onnx_classification["preprocess"].read_text())
    g = np.random.default_rng(size[0] * 1000 + size[1])
    image = Image.fromarray(g.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    (file := tmp_path / "odd.png").parent.mkdir(exist_ok=True)
    image.save(file)
    expected = load(run, str(checkpoint), "cpu").predict(str(file))[0].probabilities
    session = onnxruntime.InferenceSession(str(onnx_classification["model"]), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": client_input(image, notes)[None]})[0][0]
    np.testing.assert_allclose(got, list(expected.values()), atol=1e-5)
    raw = onnxruntime.InferenceSession(str(onnx_classification["raw_model"]), providers=["CPUExecutionProvider"])
    got_raw = raw.run(None, {"images": np.asarray(image)[None]})[0][0]
    np.testing.assert_allclose(got_raw, list(expected.values()), atol=onnx_classification["raw_tolerance"])


def test_the_test_vector_checks_a_client(onnx_classification):
    import onnxruntime

    notes = json.loads(onnx_classification["preprocess"].read_text())
    vector = notes["test_vector"]
    x = client_input(Image.open(onnx_classification["preprocess"].parent / vector["image"]), notes)
    assert list(x.shape) == vector["input"]["shape"]
    assert float(x.astype(np.float64).sum()) == pytest.approx(vector["input"]["sum"], abs=1e-3)
    np.testing.assert_allclose(x.flatten()[:8], vector["input"]["first"], atol=1e-5)
    session = onnxruntime.InferenceSession(str(onnx_classification["model"]), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": x[None]})[0].flatten(),
                               vector["output"]["values"], atol=1e-5)
