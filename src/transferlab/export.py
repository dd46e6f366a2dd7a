"""`transferlab-export run=<run dir> format=onnx|torchscript`: a finished run's model as one file
a deployer runs without transferlab, checked against PyTorch before it is called done.

Writes `<run>/export/` (or `out=`):

- `model.onnx` (ONNX Runtime, any ONNX consumer) or `model.pt` (TorchScript, `torch.jit.load`):
  from a normalised NCHW float32 batch to class probabilities, (N, C) for classification and
  (N, C, H, W) for segmentation, the same numbers as the module's `predict_step`. The batch axis is
  dynamic; for the U-Net height and width are too.
- `preprocess.json`: what a deployer does before and after the model (the eval transform's resize
  and crop in words and numbers, mean, std, class names, what the output means).

The exported model runs on a few of the run's own val images (its config.yaml's data.root) through
the eval transform, next to PyTorch, at batch sizes other than the one the export traced (and for
the U-Net at another height and width); a max abs difference above `tolerance` fails the export.
Like `transferlab-train` only Hydra is imported at start; torch loads when the export begins.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from transferlab.errors import ConfigError
from transferlab.train import USER_ERRORS, config_dir, finished_run, shown

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


def export_onnx(model, example, path: Path, segmentation: bool, num_classes: int,
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
    if segmentation:
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
    # The output's height and width are the input's (the U-Net crops its padding back off):
    # name them so, instead of the exporter's symbolic expressions.
    dims = ["batch", num_classes, "height", "width"] if segmentation else ["batch", num_classes]
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
    """preprocess.json: the eval transform (transferlab.data.*.eval_transform) in words and
    numbers, and what goes in and comes out of the model."""
    import torch

    from transferlab.data.classification import resize_side
    from transferlab.models.unet import VGGEncoder

    pre = predictor.preprocess
    task, size = pre["task"], int(pre["image_size"])
    names = predictor.class_names
    segmentation = task == "segmentation"
    if segmentation:
        resize = {
            "rule": f"resize the whole image to {size}x{size} (height x width), ignoring its "
                    "aspect ratio; no crop",
            "size": [size, size],
        }
    else:
        shorter = resize_side(size)
        resize = {
            "rule": f"resize so that the shorter side is {shorter} px (round({size} * 256 / 224)), "
                    f"keeping the aspect ratio; then crop the central {size}x{size}",
            "shorter_side": shorter,
            "center_crop": [size, size],
        }
    resize["interpolation"] = "bilinear with antialiasing (torchvision v2.Resize on a PIL image)"
    spatial = ["height", "width"] if segmentation else [size, size]
    notes = {
        "task": task,
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
            "shape": ["batch", len(names), *(spatial if segmentation else [])],
            "meaning": (
                "per-pixel class probabilities: channel i is class_names[i], they sum to 1 over "
                "the channels at each pixel" if segmentation else
                "class probabilities: column i is class_names[i], each row sums to 1"
            ),
        },
        "model": {"format": fmt, "file": file, "checkpoint": predictor.checkpoint.name,
                  "torch": torch.__version__.split("+")[0]},
    }
    if fmt == "onnx":
        notes["model"]["opset"] = opset
    if segmentation:
        notes["input"]["height_width"] = (
            f"any size; the network zero-pads height and width to multiples of {VGGEncoder.reduction} "
            f"(bottom, right) and crops its output back, so the output has the input's height and "
            f"width. The eval transform (what validation saw) gives {size}x{size}"
        )
        notes["postprocess"] = (
            "to get a mask at the image's own size: resize the probabilities bilinearly "
            "(align_corners=False) to the original height x width, then take the argmax over the "
            "class channel; the class id indexes class_names (0: background)"
        )
    else:
        notes["postprocess"] = "the predicted class is the argmax of each row"
    return notes


# -- the images the export is checked on ---------------------------------------------------------


def val_folder(run_dir: Path, task: str) -> tuple[Path | None, str]:
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
    folder = Path(root) / "val" / ("images" if task == "segmentation" else "")
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
    from transferlab.data.preprocess import eval_transform

    pre = predictor.preprocess
    size = int(pre["image_size"])
    segmentation = predictor.task == "segmentation"
    count = max(int(count), EXAMPLE_BATCH)
    other = (size + 16, size + 8)  # a height and width the export did not trace, for the U-Net

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
        x = torch.stack([eval_transform(pre)(i) for i in images])
        if len(x) < EXAMPLE_BATCH:  # one image: its mirror image makes the second
            x = torch.cat([x, x.flip(-1)])
        source = f"{len(images)} image(s): {source}"
    else:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(count, 3, size, size, generator=generator)
        source = f"{count} random tensors (no images)"

    batches = [(f"batch {len(x)} at {size}x{size}", x), (f"batch 1 at {size}x{size}", x[:1])]
    if segmentation:
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

    from transferlab.console import quiet_libraries
    from transferlab.inference import load

    quiet_libraries()
    run_dir = Path(run)
    predictor = load(run_dir, checkpoint, device="cpu")
    segmentation = predictor.task == "segmentation"
    example, batches, source = check_batches(predictor, run_dir, check_images, check_count)
    out_dir = Path(out) if out else run_dir / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILES[fmt]
    model = probability_model(predictor.module)
    log.info("exporting %s (%s, %s) to %s", shown(predictor.checkpoint), predictor.task,
             type(predictor.module.net).__name__, shown(path))
    used_opset = None
    if fmt == "onnx":
        used_opset = export_onnx(model, example, path, segmentation, len(predictor.class_names), opset)
    else:
        export_torchscript(model, example, path)
    notes_path = out_dir / "preprocess.json"
    notes = deploy_notes(predictor, fmt, path.name, used_opset)
    notes_path.write_text(json.dumps(notes, indent=2) + "\n")
    diffs = compare(predictor, exported_runner(path, fmt), batches, float(tolerance), path)
    return {
        "format": fmt, "model": path, "preprocess": notes_path, "checkpoint": predictor.checkpoint,
        "task": predictor.task, "opset": used_opset, "checked_on": source, "diffs": diffs,
        "max_abs_diff": max(d for _, d in diffs), "tolerance": float(tolerance),
    }


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
def main(cfg: DictConfig) -> None:
    check_images = cfg.check_images
    if isinstance(check_images, ListConfig):
        check_images = OmegaConf.to_container(check_images)
    try:
        finished_run(cfg)
        done = export(cfg.run, cfg.format, cfg.checkpoint, cfg.out, cfg.opset, cfg.tolerance,
                      check_images, cfg.check_count)
    except (*USER_ERRORS, ExportError) as err:
        log.error("%s", err)
        log.debug("where it failed", exc_info=err)
        sys.exit(1)
    lines = [
        ("model", shown(done["model"]) + (f" (ONNX opset {done['opset']})" if done["opset"] else "")),
        ("preprocess", shown(done["preprocess"])),
        ("checkpoint", shown(done["checkpoint"])),
        ("checked on", done["checked_on"]),
        *((f"  {label}", f"max abs diff {d:.2e}") for label, d in done["diffs"]),
        ("max diff",
         f"{done['max_abs_diff']:.2e} <= tolerance {done['tolerance']:g}: matches PyTorch"),
    ]
    log.info("exported:\n%s", "\n".join(f"  {k:<18}  {v}" for k, v in lines))


if __name__ == "__main__":
    main()
