"""A finished run's model as one file a deployer runs without transferlab, checked against
PyTorch before it is called done: `export(run, format="onnx"|"torchscript")`, or
`transferlab-export run=<run dir> format=...` from the command line.

Writes `<run>/export/` (or `out=`):

- `model.onnx` (ONNX Runtime, any ONNX consumer) or `model.pt` (TorchScript, `torch.jit.load`):
  from a normalised NCHW float32 batch to class probabilities, (N, C) for classification and
  (N, C, H, W) for a dense task (segmentation), the same numbers as the module's `predict_step`.
  The batch axis is dynamic; for a dense task height and width are too.
- `preprocess.json`: what a deployer does before and after the model (the eval transform's resize
  and crop in words and numbers, mean, std, class names, what the output means).

The exported model runs on a few of the run's own val images (its config.yaml's data.root) through
the eval transform, next to PyTorch, at batch sizes other than the one the export traced (and for
the U-Net at another height and width); a max abs difference above `tolerance` fails the export.
Imports nothing heavy at start; torch loads when the export begins.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transferlab.console import quiet_libraries, shown
from transferlab.errors import ConfigError
from transferlab.export.checks import (
    EXAMPLE_BATCH,
    check_batches,
    check_images_for,
    compare,
    compare_raw,
    test_vector_image,
)
from transferlab.export.graphs import (
    ExportCheckError,
    ExportError,
    export_onnx,
    export_torchscript,
    exported_runner,
    probability_model,
    raw_model,
    require_onnx,
)
from transferlab.export.notes import deploy_notes, raw_notes, test_vector

__all__ = ["EXAMPLE_BATCH", "ExportCheckError", "ExportError", "compare", "export"]

log = logging.getLogger("transferlab")

FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}


PREPROCESS = ("outside", "inside")  # the client normalises the images, or the model does


def export(run: str | Path, format: str = "onnx", checkpoint: str = "best",
           out: str | Path | None = None, opset: int | None = None, tolerance: float = 1e-4,
           check_images=None, check_count: int = 4, preprocess: str = "outside",
           raw_tolerance: float = 1e-2) -> dict:
    """Export a finished run's model (see the module docstring) and check it against PyTorch.
    `preprocess=inside` also writes `model_raw.onnx`, which takes uint8 RGB images and does the
    eval transform itself, checked on raw images within `raw_tolerance`. Returns the paths written
    and the max abs difference of each check. Raises ConfigError for settings that cannot work,
    ExportError when the exporter fails on the network and ExportCheckError when the exported
    model does not match."""
    fmt, preprocess = str(format), str(preprocess)
    if fmt not in FILES or preprocess not in PREPROCESS:
        raise ConfigError(f"format={fmt} preprocess={preprocess}; choose format from {tuple(FILES)} "
                          f"and preprocess from {PREPROCESS}")
    if fmt == "onnx" or preprocess == "inside":
        require_onnx()
    if fmt != "onnx" and opset is not None:
        log.warning("opset=%s is for format=onnx; TorchScript has no opset", opset)

    from transferlab.inference import load

    quiet_libraries()
    run_dir = Path(run)
    predictor = load(run_dir, checkpoint, device="cpu")
    images, source = check_images_for(predictor, run_dir, check_images, check_count)
    example, batches, source = check_batches(predictor, images, source, check_count)
    out_dir = Path(out) if out else run_dir / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILES[fmt]
    log.info("exporting %s (%s, %s) to %s", shown(predictor.checkpoint), predictor.task.name,
             type(predictor.module.net).__name__, shown(path))
    used_opset = None
    model = probability_model(predictor.module)
    if fmt == "onnx":
        used_opset = export_onnx(model, example, path, predictor.task.dense, len(predictor.class_names),
                                 opset)
    else:
        export_torchscript(model, example, path)
    notes = deploy_notes(predictor, fmt, path.name, used_opset)
    notes["test_vector"] = test_vector(predictor, test_vector_image(), out_dir / "test_vector.png")
    diffs = compare(predictor, exported_runner(path, fmt), batches, float(tolerance), path)
    done = {"format": fmt, "model": path, "checkpoint": predictor.checkpoint, "task": predictor.task.name,
            "opset": used_opset, "checked_on": source, "diffs": diffs,
            "max_abs_diff": max(d for _, d in diffs), "tolerance": float(tolerance)}
    if preprocess == "inside":
        done |= export_raw(predictor, out_dir, images or [test_vector_image()], opset, raw_tolerance)
        notes["raw_model"] = raw_notes(predictor, done["raw_model"].name)
    notes_path = out_dir / "preprocess.json"
    notes_path.write_text(json.dumps(notes, indent=2) + "\n")
    return done | {"preprocess": notes_path}


def export_raw(predictor, out_dir: Path, images: list, opset: int | None, tolerance: float) -> dict:
    """model_raw.onnx: the eval transform inside, from uint8 NHWC images; checked on `images`."""
    import numpy as np
    import torch

    path = out_dir / "model_raw.onnx"
    first = np.asarray(images[0], dtype=np.uint8)
    example = torch.from_numpy(np.stack([first, first[:, ::-1]]).copy())  # a batch of two
    export_onnx(raw_model(predictor), example, path, predictor.task.dense,
                len(predictor.class_names), opset, raw=True)
    worst = compare_raw(predictor, exported_runner(path, "onnx"), images, float(tolerance), path)
    log.info("raw-image model %s matches PyTorch within %.2e on %d image(s)", shown(path), worst, len(images))
    return {"raw_model": path, "raw_max_abs_diff": worst, "raw_tolerance": float(tolerance)}
