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

import importlib
import json
import logging
import warnings
from pathlib import Path

from omegaconf import OmegaConf

from transferlab.console import quiet_libraries, shown
from transferlab.errors import ConfigError

log = logging.getLogger("transferlab")

FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the exporter needs the first two
INSTALL_HINT = "pip install 'transferlab[export]'"
INPUT, OUTPUT = "images", "probabilities"  # ONNX graph input and output names
EXAMPLE_BATCH = 2  # the batch the export traces; the checks run other sizes
JIT_DEPRECATED = r".*torch\.jit.* is deprecated"  # torch.jit's FutureWarning in current torch


class ExportError(RuntimeError):
    """The exporter cannot convert this network."""


class ExportCheckError(ExportError):
    """The exported model's probabilities differ from PyTorch's by more than `tolerance`."""


def require_onnx() -> None:
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(
            f"format=onnx needs {', '.join(missing)}, not installed here: {INSTALL_HINT} "
            "(or use format=torchscript, which needs torch alone)"
        )


# -- the model a deployer runs -------------------------------------------------------------------


def probability_model(module):
    """The network and the module's own `probabilities` (softmax; a binary U-Net's one logit
    expanded to two classes) as one small nn.Module: what `predict_step` computes. Not the
    LightningModule itself, which torch.export cannot trace outside a Trainer."""
    import torch
    from torch import nn

    class Probabilities(nn.Module):
        def __init__(self, net: nn.Module, probabilities):
            super().__init__()
            self.net = net
            self.probabilities = probabilities

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.probabilities(self.net(images))

    Probabilities.__qualname__ = "Probabilities"  # TorchScript names the class after this
    return Probabilities(module.net, module.probabilities).eval()


def export_onnx(model, example, path: Path, dense: bool, num_classes: int,
                opset: int | None) -> int:
    """torch.onnx.export's torch.export-based exporter (dynamo=True, the default of current torch):
    one self-contained file (external weights only past protobuf's 2 GB). Returns the opset."""
    import onnx_ir as ir
    import torch
    from torch.export import Dim

    for name in ("onnxscript", "onnx_ir"):  # their INFO lines (each folding, each pass) are noise here
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    axes = {0: Dim("batch", min=1)}
    if dense:
        axes |= {2: Dim("height", min=1), 3: Dim("width", min=1)}
    try:
        program = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes={"images": axes},
            input_names=[INPUT], output_names=[OUTPUT], opset_version=opset, verbose=False,
        )
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise ExportError(
            f"the ONNX exporter failed on this network: {type(err).__name__}: {first} "
            "(format=torchscript may work; hydra.verbose=transferlab shows the traceback)"
        ) from err
    # A dense output's height and width are the input's (the U-Net crops its padding back off):
    # name them so, instead of the exporter's symbolic expressions.
    dims = ["batch", num_classes, "height", "width"] if dense else ["batch", num_classes]
    program.model.graph.outputs[0].shape = ir.Shape(dims)
    program.save(path)
    return int(program.model.opset_imports[""])


def export_torchscript(model, example, path: Path) -> None:
    """torch.jit.trace: the traced graph keeps the input's shape symbolic, so the batch (and the
    U-Net's padding to multiples of 16) follow the input. torch.jit is deprecated in current
    torch (FutureWarning); the warning is ours to know, not the user's to read on every export."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATED, category=FutureWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def exported_runner(path: Path, fmt: str):
    """A function from a float32 NCHW batch to the exported model's output, as numpy."""
    import torch

    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run([OUTPUT], {INPUT: x.numpy()})[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATED, category=FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(x):
        with torch.inference_mode():
            return loaded(x).numpy()

    return run


# -- what a deployer reads -----------------------------------------------------------------------


def deploy_notes(predictor, fmt: str, file: str, opset: int | None) -> dict:
    """preprocess.json: the eval transform in words and numbers (the task's), and what goes in
    and comes out of the model."""
    import torch

    pre, task = predictor.preprocess, predictor.task
    size, names = int(pre["image_size"]), predictor.class_names
    resize = task.describe_resize(pre)
    resize["interpolation"] = "bilinear with antialiasing (torchvision v2.Resize on a PIL image)"
    spatial = ["height", "width"] if task.dense else [size, size]
    output = task.output_notes(names, size)
    notes = {
        "task": task.name,
        "image_size": size,
        "mean": list(pre["mean"]),
        "std": list(pre["std"]),
        "class_names": names,
        "resize": resize,
        "pixels": "RGB (greyscale, palette and 16-bit images converted to 8-bit RGB), values "
                  "0..255 divided by 255, then (value - mean[c]) / std[c] for channel c",
        "input": {
            "name": INPUT if fmt == "onnx" else "the model's one argument",
            "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, *spatial],
            "batch": "any size",
        },
        "output": {
            "name": OUTPUT if fmt == "onnx" else "the model's return value",
            "dtype": "float32",
            "shape": ["batch", len(names), *(spatial if task.dense else [])],
            "meaning": output["meaning"],
        },
        "model": {"format": fmt, "file": file, "checkpoint": predictor.checkpoint.name,
                  "torch": torch.__version__.split("+")[0]},
        "postprocess": output["postprocess"],
    }
    if fmt == "onnx":
        notes["model"]["opset"] = opset
    if task.dense:
        multiple = predictor.module.backbone.pads_to
        padding = (f"the network zero-pads height and width to multiples of {multiple} (bottom, "
                   "right) and crops its output back" if multiple else "the network keeps it")
        notes["input"]["height_width"] = (
            f"any size; {padding}, so the output has the input's height and width. The eval "
            f"transform (what validation saw) gives {size}x{size}"
        )
    return notes


# -- the images the export is checked on ---------------------------------------------------------


def val_folder(run_dir: Path, task) -> tuple[Path | None, str]:
    """The run's val images (from its config.yaml's data.root), or None and why not."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None, f"{config} does not exist"
    try:
        root = OmegaConf.select(OmegaConf.load(config), "data.root")
    except Exception as err:  # a damaged config costs the real images, not the export
        return None, f"{config} does not load ({type(err).__name__})"
    if not root:
        return None, f"{config} sets no data.root"
    folder = task.image_folder(Path(root) / "val")
    if not folder.is_dir():
        return None, f"{folder} does not exist (data.root={root} in {config})"
    return folder, ""


def spread(items: list, count: int) -> list:
    """`count` items evenly spaced through `items` (so a sorted class folder gives several classes)."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def usable_few(predictor, inputs, count: int) -> list:
    """Up to `count` images spread through `inputs` that decode; only a few files are decoded,
    not a whole val set."""
    from transferlab.data.images import is_image_name
    from transferlab.inference import image_sources

    named = [s for s in image_sources(inputs) if not isinstance(s, Path) or is_image_name(s)]
    return spread(predictor.usable(spread(named, 2 * count), on_bad_file="skip")[0], count)


def check_batches(predictor, run_dir: Path, check_images, count: int):
    """[(label, batch)] to compare on, and where the images came from. Real images through the
    eval transform when there are any; random normalised-looking tensors otherwise."""
    import torch
    from torchvision.transforms import v2

    from transferlab.data.images import as_rgb, load_rgb

    pre = predictor.preprocess
    size = int(pre["image_size"])
    dense = predictor.task.dense
    count = max(int(count), EXAMPLE_BATCH)
    other = (size + 16, size + 8)  # a height and width the export did not trace, if dense

    images, source = [], ""
    if check_images:
        sources = usable_few(predictor, check_images, count)
        if not sources:
            raise ConfigError(f"check_images={check_images}: no usable image")
        source = f"check_images={check_images}"
    else:
        folder, why = val_folder(run_dir, predictor.task)
        sources = usable_few(predictor, folder, count) if folder else []
        if folder and not sources:
            why = f"{folder} holds no usable image"
        if sources:
            source = f"the run's val images in {shown(folder)}"
        else:
            log.warning("no val images to check on (%s): checking on random tensors instead; "
                        "pass check_images=<folder> to check on real images", why)
    if sources:
        images = [load_rgb(s) if isinstance(s, Path) else as_rgb(s) for s in sources]
        transform = predictor.transform()
        x = torch.stack([transform(i) for i in images])
        if len(x) < EXAMPLE_BATCH:  # one image: its mirror image makes the second
            x = torch.cat([x, x.flip(-1)])
        source = f"{len(images)} image(s): {source}"
    else:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(count, 3, size, size, generator=generator)
        source = f"{count} random tensors (no images)"

    batches = [(f"batch {len(x)} at {size}x{size}", x), (f"batch 1 at {size}x{size}", x[:1])]
    if dense:
        if images:
            resized = v2.Compose([
                v2.ToImage(), v2.Resize(other, antialias=True), v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(pre["mean"], pre["std"]),
            ])
            x2 = torch.stack([resized(i) for i in images])
        else:
            x2 = torch.randn(count, 3, *other, generator=generator)
        batches.append((f"batch {len(x2)} at {other[0]}x{other[1]}", x2))
    return x[:EXAMPLE_BATCH], batches, source


def compare(predictor, run, batches, tolerance: float, path: Path) -> list[tuple[str, float]]:
    import numpy as np
    import torch

    diffs = []
    for label, x in batches:
        with torch.inference_mode():
            expected = predictor.module.predict_step(x, 0).float().cpu().numpy()
        try:
            got = np.asarray(run(x))
        except Exception as err:
            raise ExportCheckError(
                f"{shown(path)} fails on a {label} input: {type(err).__name__}: "
                f"{(str(err).strip().splitlines() or [''])[0]}"
            ) from err
        if got.shape != expected.shape:
            raise ExportCheckError(f"{shown(path)} gives shape {got.shape} for a {label} input; "
                                   f"PyTorch gives {expected.shape}")
        diffs.append((label, float(np.abs(got - expected).max())))
    worst = max(d for _, d in diffs)
    if not worst <= tolerance:  # NaN fails too
        detail = ", ".join(f"{label}: {d:.2e}" for label, d in diffs)
        raise ExportCheckError(
            f"{shown(path)} does not match PyTorch: max abs difference in the probabilities "
            f"{worst:.2e} > tolerance={tolerance:g} ({detail}). Do not deploy it; a looser "
            "tolerance= accepts it"
        )
    return diffs


# -- the export ----------------------------------------------------------------------------------


def export(run: str | Path, format: str = "onnx", checkpoint: str = "best",
           out: str | Path | None = None, opset: int | None = None, tolerance: float = 1e-4,
           check_images=None, check_count: int = 4) -> dict:
    """Export a finished run's model (see the module docstring) and check it against PyTorch.
    Returns the paths written and the max abs difference of each check. Raises ConfigError for
    settings that cannot work, ExportError when the exporter fails on the network and
    ExportCheckError when the exported model does not match."""
    fmt = str(format)
    if fmt not in FILES:
        raise ConfigError(f"format={fmt}; choose one of {tuple(FILES)}")
    if fmt == "onnx":
        require_onnx()
    elif opset is not None:
        log.warning("opset=%s is for format=onnx; TorchScript has no opset", opset)

    from transferlab.inference import load

    quiet_libraries()
    run_dir = Path(run)
    predictor = load(run_dir, checkpoint, device="cpu")
    example, batches, source = check_batches(predictor, run_dir, check_images, check_count)
    out_dir = Path(out) if out else run_dir / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILES[fmt]
    model = probability_model(predictor.module)
    log.info("exporting %s (%s, %s) to %s", shown(predictor.checkpoint), predictor.task.name,
             type(predictor.module.net).__name__, shown(path))
    used_opset = None
    if fmt == "onnx":
        used_opset = export_onnx(model, example, path, predictor.task.dense, len(predictor.class_names),
                                 opset)
    else:
        export_torchscript(model, example, path)
    notes_path = out_dir / "preprocess.json"
    notes = deploy_notes(predictor, fmt, path.name, used_opset)
    notes_path.write_text(json.dumps(notes, indent=2) + "\n")
    diffs = compare(predictor, exported_runner(path, fmt), batches, float(tolerance), path)
    return {
        "format": fmt, "model": path, "preprocess": notes_path, "checkpoint": predictor.checkpoint,
        "task": predictor.task.name, "opset": used_opset, "checked_on": source, "diffs": diffs,
        "max_abs_diff": max(d for _, d in diffs), "tolerance": float(tolerance),
    }
