"""`backbone=tv_segmentation backbone.name=fcn_resnet50|deeplabv3_mobilenet_v3_large|...`: any
model of `torchvision.models.segmentation` (FCN, DeepLabV3, LR-ASPP), with a new head.

Parameter names are torchvision's (`backbone.layer1.0.conv1.weight`, `classifier.4.weight`), so
its COCO-with-VOC-labels state_dicts load as they are. The head is the 1x1 conv(s) that give the
class logits (LR-ASPP has two, its low- and high-resolution branches); `init=pretrained` loads
everything else. `init.weights=backbone` loads only the ImageNet classifier the builder names as
its `weights_backbone` (ResNet-50/101, MobileNetV3-Large), so the whole head starts fresh.
"""

import difflib
import inspect
import logging

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPPHead

from transferlab.errors import ConfigError
from transferlab.models.backbones.base import HEAD, Backbone, Stages, check_covers
from transferlab.models.backbones.torchvision import (
    resnet_body,
    torchvision_normalization,
    torchvision_state,
    weights_state,
)

log = logging.getLogger(__name__)

BACKBONE_WEIGHTS = "backbone"  # init.weights=backbone: the ImageNet classifier only
# Per head class: its layers that give the class logits (new for num_classes, never loaded).
LOGIT_LAYERS: dict[type, tuple[str, ...]] = {
    FCNHead: ("4",), DeepLabHead: ("4",), LRASPPHead: ("low_classifier", "high_classifier"),
}
CLASSIFIER_HEADS = ("fc.", "classifier.")  # an ImageNet classifier's own layers: not in the backbone


def segmentation_models() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models.segmentation)


class SegmentationNet(nn.Module):
    """torchvision's segmentation model (same submodules and names) returning one logits tensor
    at the input's size, or in training with an aux classifier {'out': ..., 'aux': ...}, so that
    predicting, evaluating and exporting see a tensor and only the loss sees the aux output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.classifier = model.classifier
        self.aux_classifier = getattr(model, "aux_classifier", None)
        # LR-ASPP's head reads two resolutions (the backbone's 'low' and 'high' maps); the others 'out'.
        self.reads_all = isinstance(model.classifier, LRASPPHead)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        logits = self.classifier(features if self.reads_all else features["out"])
        out = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if self.aux_classifier is None or not self.training:
            return out
        aux = F.interpolate(self.aux_classifier(features["aux"]), size=size, mode="bilinear",
                            align_corners=False)
        return {"out": out, "aux": aux}


def backbone_weights(name: str) -> torchvision.models.WeightsEnum:
    """The ImageNet weights torchvision's builder `name` would put in its backbone by default."""
    builder = torchvision.models.get_model_builder(name)
    return inspect.signature(builder).parameters["weights_backbone"].default


def body(backbone: nn.Module) -> Stages:
    """A ResNet backbone's stem and layer1..4; a MobileNetV3's feature blocks, named as the
    classifier's stage map names them (`features.<i>`)."""
    if hasattr(backbone, "layer1"):
        return resnet_body(backbone)
    return {f"features.{name}": [m] for name, m in backbone.named_children()}


class TorchvisionSegmentationBackbone(Backbone):
    """Any model of `torchvision.models.list_models(module=torchvision.models.segmentation)`,
    built without weights (`init` decides) for `num_classes`. `aux_loss=True` builds the aux
    classifier (FCN, DeepLabV3; the module weighs its loss by `model.aux_weight`); extra
    arguments go to the builder."""

    dense = True

    def __init__(self, name: str, num_classes: int, aux_loss: bool = False, **kwargs):
        known = segmentation_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            raise ConfigError(
                f"unknown segmentation model {name!r}; choose one of {', '.join(close or known)} "
                "(torchvision.models.segmentation; transferlab-backbones lists them)")
        if aux_loss and name.startswith("lraspp"):
            raise ConfigError(f"{name} has no aux classifier: drop backbone.aux_loss")
        self.name = name
        # weights_backbone=None: the builder's default downloads ImageNet weights; init decides.
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                             num_classes=num_classes, aux_loss=aux_loss, **kwargs)
        self.net = SegmentationNet(model)
        logits = tuple(f"classifier.{p}" for p in LOGIT_LAYERS[type(self.net.classifier)])
        self.head_path = logits[-1]
        self.logit_layers = logits + (("aux_classifier.4",) if aux_loss else ())
        log.info("%s (%d output channels, aux classifier %s): %s parameters, %s in the backbone",
                 name, num_classes, "on" if aux_loss else "off",
                 f"{sum(p.numel() for p in self.net.parameters()):,}",
                 f"{sum(p.numel() for p in self.net.backbone.parameters()):,}")

    def stages(self) -> Stages:
        stages = body(self.net.backbone)
        stages[HEAD] = [m for m in (self.net.classifier, self.net.aux_classifier) if m is not None]
        check_covers(self.net, stages)
        return stages

    @classmethod
    def weights_normalization(cls, name, weights):
        if weights == BACKBONE_WEIGHTS:
            preset = backbone_weights(name).transforms()
            return tuple(preset.mean), tuple(preset.std)
        return torchvision_normalization(name, weights)

    def pretrained_state(self, weights):
        if weights == BACKBONE_WEIGHTS:
            return weights_state(backbone_weights(self.name), self.name)
        try:
            return torchvision_state(self.name, weights)
        except ConfigError as err:
            if "is not a weights name" not in str(err):
                raise
            raise ConfigError(f"{err}, or {BACKBONE_WEIGHTS} (the ImageNet classifier in the "
                              "backbone only)") from None

    def map_pretrained(self, state):
        """A segmentation state_dict (torchvision's, a transferlab run's) loads all but the logit
        layers; its aux classifier only where this net has one (wholly fresh if the state has
        none). A classifier's (ImageNet) state_dict loads the backbone only: `layer1.*` is
        `backbone.layer1.*`, MobileNetV3's `features.<i>.*` is `backbone.<i>.*`."""
        if any(k.startswith("backbone.") for k in state):
            fresh = self.logit_layers
            if self.net.aux_classifier is None:
                state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
            elif not any(k.startswith("aux_classifier.") for k in state):
                fresh = (*fresh, "aux_classifier")
            return state, fresh
        own = self.net.state_dict()
        mapped = {}
        for key, value in state.items():
            target = next((t for t in (f"backbone.{key}", f"backbone.{key.removeprefix('features.')}")
                           if t in own), None)
            if target is not None:
                mapped[target] = value
            elif not key.startswith(CLASSIFIER_HEADS):
                mapped[f"backbone.{key}"] = value  # unexpected: the error names it
        return mapped, ("classifier", "aux_classifier")
