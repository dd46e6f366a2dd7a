"""Where the model looks: class activation maps with pytorch-grad-cam (`grad-cam` on PyPI, an
optional extra: pip install 'transferlab[explain]').

Why that library: it has Grad-CAM, Grad-CAM++ and EigenCAM behind one call, with the
token-to-grid reshapes ViT and Swin need, and returns maps already normalised to [0, 1] at the
input's size; Captum, the other well-kept choice, has Grad-CAM only. Its cost is OpenCV and
scikit-learn as dependencies, which is why it is an extra.

The target layer is the output of the last stage below the head whose output is a feature map
of at least 4 x 4 cells (the stage map's: ResNet's layer4 at 224 px, layer3 at 64 px; VGG's last
conv block), or `stage=<name>`. Token models:
torchvision's ViT and timm's ViT/DeiT at the last block's first norm (its attention mixes the
patch tokens into the class token, so their gradients are not zero), their tokens reshaped to the
patch grid; torchvision's Swin at its last block's first norm (NHWC). Other token models are
refused by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferlab.errors import ConfigError
from transferlab.models.backbones import HEAD, Backbone, eval_mode, stage_modules

log = logging.getLogger(__name__)

METHODS = ("gradcam", "gradcam++", "eigencam")
MIN_CELLS = 4  # the default stage's map has at least this many cells a side (ResNet at 224: 7)


@dataclass(frozen=True)
class CamSettings:
    """The `cam=` group of transferlab-predict and transferlab-eval: a method (None: no maps) and
    the stage whose output the map is drawn on (None: target_layer's default)."""

    method: str | None = None
    stage: str | None = None

    def __post_init__(self):
        if self.method is None and self.stage is not None:
            raise ConfigError(f"cam.stage={self.stage} needs a method: cam=gradcam (or "
                              f"{', '.join(METHODS[1:])})")
        if self.method is not None:
            cam_class(self.method)  # an unknown method or a missing package stops before any work


def cam_class(method: str):
    try:
        from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
    except ImportError:
        raise ConfigError("cam= needs the grad-cam package: pip install 'transferlab[explain]'") from None
    if method not in METHODS:
        raise ConfigError(f"cam={method}; choose one of {', '.join(METHODS)}")
    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}[method]


def _tokens_to_grid(net: nn.Module):
    """The reshape for a ViT's tokens (the class token first): (N, 1 + h*w, C) -> (N, C, h, w)."""
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:, :]
        side = int(round(patches.shape[1] ** 0.5))
        return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)
    return reshape


def _nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def token_layer(net: nn.Module):
    """(layer, reshape) for the token models covered, else None."""
    from torchvision.models import SwinTransformer, VisionTransformer

    if isinstance(net, VisionTransformer):
        return net.encoder.layers[-1].ln_1, _tokens_to_grid(net)
    if isinstance(net, SwinTransformer):
        return net.features[-1][-1].norm1, _nhwc_to_nchw
    blocks = getattr(net, "blocks", None)
    if getattr(net, "cls_token", None) is not None and isinstance(blocks, nn.Sequential):
        return blocks[-1].norm1, _tokens_to_grid(net)  # timm's ViT, DeiT
    return None


def target_layer(backbone: Backbone, example: torch.Tensor, stage: str | None = None):
    """(layer, reshape or None): `stage`'s last module, else the last stage below the head whose
    output is a feature map (N, C, H, W); token models as the module docstring says."""
    token = token_layer(backbone.net)
    if token is not None and stage is None:
        return token
    stages = backbone.stages()
    names = check_stage(backbone, stage)
    shapes = output_shapes(backbone, example)
    for name in ([stage] if stage else reversed(names)):
        modules = stage_modules(stages[name])
        shape = shapes.get(id(modules[-1]), ()) if modules else ()
        # A map of 2 x 2 cells or fewer says little of where: the default looks further down.
        if len(shape) == 4 and (stage or min(shape[2:]) >= MIN_CELLS):
            return modules[-1], None
    raise ConfigError(f"no stage of {backbone.name} ({type(backbone.net).__name__}) outputs a "
                      "feature map a class activation map could be drawn on; its token outputs "
                      "are not covered (torchvision ViT and Swin, timm ViT and DeiT are)")


def check_stage(backbone: Backbone, stage: str | None) -> list[str]:
    """The stages below the head; an unknown `stage` is refused naming them."""
    names = [n for n in backbone.stages() if n != HEAD]
    if stage is not None and stage not in names:
        raise ConfigError(f"cam.stage={stage} is not a stage below the head; stages are {names}")
    return names


def output_shapes(backbone: Backbone, example: torch.Tensor) -> dict[int, tuple]:
    """The output shape of every stage module for one example image (module id -> shape)."""
    shapes, hooks = {}, []

    def record(module, args, output) -> None:  # a hook that returns something replaces the output
        shapes.setdefault(id(module), tuple(getattr(output, "shape", ())))

    for items in backbone.stages().values():
        for module in stage_modules(items):
            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad(), eval_mode(backbone.net):
            backbone.net(example[None])
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


class ProbabilityOf(nn.Module):
    """The network with its outputs as the module computes them (a binary U-Net's one logit
    expanded to two classes), so class indices mean the same as in predictions."""

    def __init__(self, module):
        super().__init__()
        self.net, self.probabilities = module.net, module.probabilities

    def forward(self, x):
        logits = self.net(x)
        if logits.ndim == 2:
            return logits
        if logits.shape[1] == 1:  # binary: the foreground logit, and its complement as background
            logits = torch.cat([-logits, logits], dim=1)
        return logits.flatten(2).mean(2)  # dense: the per-class mean over pixels


def cams(module, x: torch.Tensor, method: str = "gradcam", targets: list[int] | None = None,
         stage: str | None = None) -> np.ndarray:
    """Class activation maps (N, H, W) in [0, 1] at `x`'s height and width, for `targets` (None:
    each image's predicted class). Gradients flow inside, whatever froze the weights or whether
    the caller runs under inference mode; the module's weights and their gradients stay as they were."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    make = cam_class(method)
    layer, reshape = target_layer(module.backbone, x[0], stage)
    model = ProbabilityOf(module).eval()
    saved = [(p, p.grad) for p in model.parameters()]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            inputs = x.detach().clone().requires_grad_(True)  # frozen weights: grads via the input
            chosen = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
            with make(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
                maps = cam(input_tensor=inputs, targets=chosen)
    finally:
        for p, grad in saved:
            p.grad = grad
    blank = int((maps.reshape(len(maps), -1).max(1) <= 0).sum())
    if blank:
        # Seen on the lung U-Net's deepest encoder stage: its gradient-weighted features are
        # negative everywhere, so the map is empty; a shallower stage draws one.
        log.warning("%d of %d class activation map(s) are zero everywhere at stage %s: cam.stage= "
                    "a shallower stage (%s) draws another", blank, len(maps),
                    stage or "(default)", ", ".join(check_stage(module.backbone, None)[:-1]))
    return maps


def overlay(image, cam: np.ndarray, alpha: float = 0.5):
    """`image` (PIL, RGB) with `cam` (H, W in [0, 1], the image's size) drawn over it in the
    jet colours (red: where the model looked most)."""
    from matplotlib import colormaps
    from PIL import Image

    heat = (colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255).astype(np.float32)
    blended = (1 - alpha) * np.asarray(image.convert("RGB"), dtype=np.float32) + alpha * heat
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


def write_overlay(path: Path, image, cam: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay(image, cam).save(path)


def peak(cam: np.ndarray) -> tuple[int, int]:
    """(x, y) of the map's maximum, in the image's pixels."""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(x), int(y)
