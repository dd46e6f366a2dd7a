"""The exported files: the network and its probabilities as one module, ONNX and TorchScript
writers, runners that read them back, and the graph that takes raw images (`preprocess=inside`)."""

from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path

from transferlab.errors import ConfigError

log = logging.getLogger("transferlab")

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the exporter needs the first two
INSTALL_HINT = "pip install 'transferlab[export]'"
INPUT, OUTPUT = "images", "probabilities"  # ONNX graph input and output names
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
                opset: int | None, raw: bool = False) -> int:
    """torch.onnx.export's torch.export-based exporter (dynamo=True, the default of current torch):
    one self-contained file (external weights only past protobuf's 2 GB). Returns the opset.
    `raw`: the input is uint8 NHWC images of any height and width (`raw_model`)."""
    import onnx_ir as ir
    import torch
    from torch.export import Dim

    for name in ("onnxscript", "onnx_ir"):  # their INFO lines (each folding, each pass) are noise here
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    axes = {0: Dim("batch", min=1)}
    if raw:  # at least the crop (or the network's smallest input), up to any size
        axes |= {1: Dim("height", min=16), 2: Dim("width", min=16)}
    elif dense:
        axes |= {2: Dim("height", min=1), 3: Dim("width", min=1)}
    try:
        program = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes=(axes,),
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
    if raw and dense:
        dims = ["batch", num_classes, "image_size", "image_size"]  # the squashed size it runs at
    program.model.graph.outputs[0].shape = ir.Shape(dims)
    program.save(path)
    return int(program.model.opset_imports[""])


def raw_model(predictor):
    """The eval transform as tensor ops (`transferlab.tasks.raw`), then the network and its
    probabilities: a model from uint8 RGB images, NHWC, straight from a decoder."""
    from torch import nn

    preprocess = predictor.task.raw_preprocess(predictor.preprocess)
    return nn.Sequential(preprocess, probability_model(predictor.module)).eval()


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
    """A function from a batch (float32 NCHW; uint8 NHWC for the raw-image model) to the exported
    model's output, as numpy."""
    import numpy as np
    import torch

    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run([OUTPUT], {INPUT: np.asarray(x)})[0]  # a tensor or an array
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATED, category=FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(x):
        with torch.inference_mode():
            return loaded(x).numpy()

    return run




