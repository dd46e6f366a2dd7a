"""The `backbone` group: every network transferlab fine-tunes, behind one protocol
(`transferlab.models.backbones.base`): torchvision classifiers, timm models, U-Nets on their
feature pyramids, torchvision's segmentation models. The configs' `_target_`s name the classes
here."""

from transferlab.models.backbones.base import (
    HEAD,
    Backbone,
    StageItem,
    Stages,
    StateDict,
    eval_mode,
    load_state_dict_file,
    load_weights_file,
    stage_modules,
    stage_parameters,
)
from transferlab.models.backbones.timm import TimmBackbone, import_timm
from transferlab.models.backbones.torchvision import (
    FAMILIES,
    TorchvisionBackbone,
    torchvision_models,
)
from transferlab.models.backbones.tv_segmentation import (
    TorchvisionSegmentationBackbone,
    segmentation_models,
)
from transferlab.models.backbones.unet import UNetBackbone

__all__ = [
    "FAMILIES", "HEAD", "Backbone", "StageItem", "Stages", "StateDict", "TimmBackbone",
    "TorchvisionBackbone", "TorchvisionSegmentationBackbone", "UNetBackbone", "eval_mode", "import_timm",
    "load_state_dict_file", "load_weights_file", "segmentation_models", "stage_modules",
    "stage_parameters", "torchvision_models",
]
