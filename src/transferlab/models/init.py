"""The `init` group: where a network's starting weights come from."""

import logging

import torch
from torch import nn

from transferlab.errors import ConfigError
from transferlab.models.backbones import Backbone, load_state_dict_file
from transferlab.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalization

log = logging.getLogger(__name__)


class DefaultInit:
    """The architecture's own random initialisation, as its constructor left it."""

    name = "default"

    def __call__(self, backbone: Backbone) -> None:
        pass

    def normalization(self, backbone: type[Backbone], name: str) -> Normalization:
        """The mean/std the data is normalised with: ImageNet's, unless weights say otherwise."""
        return IMAGENET_MEAN, IMAGENET_STD


class HeInit(DefaultInit):
    """Kaiming-normal conv and linear weights, zero biases, norm layers at weight 1 / bias 0."""

    name = "he"

    def __call__(self, backbone: Backbone) -> None:
        he_init(backbone.net)


def he_init(net: nn.Module) -> None:
    """`init=he` on any network (the benchmarks' plain loops use it on bare torchvision models)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # fan_out for convs as torchvision does; fan_in for linears keeps the logits' scale
            mode = "fan_in" if isinstance(m, nn.Linear) else "fan_out"
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class Pretrained(DefaultInit):
    """The backbone's pretrained weights by name (torchvision Weights, timm tags; cached under
    TORCH_HOME / the Hugging Face cache), or a local state_dict file.

    The new head keeps its fresh init; everything else must load, or the run stops: a silent
    fallback to random weights would make every comparison meaningless.
    """

    name = "pretrained"

    def __init__(self, weights: str = "DEFAULT", weights_path: str | None = None):
        self.weights = weights
        self.weights_path = weights_path

    def normalization(self, backbone, name):
        if self.weights_path is not None:
            return IMAGENET_MEAN, IMAGENET_STD
        return backbone.weights_normalization(name, self.weights)

    def __call__(self, backbone: Backbone) -> None:
        if self.weights_path is not None:
            state, source = load_state_dict_file(self.weights_path), self.weights_path
        else:
            state, source = backbone.pretrained_state(self.weights)
        state, fresh = backbone.map_pretrained(state)
        load_matching(backbone.net, state, source=source, skip=fresh)
        log.info("loaded pretrained weights for %s from %s", backbone.name, source)


def load_matching(
    net: nn.Module, state: dict[str, torch.Tensor], source: str, skip: tuple[str, ...] = ()
) -> None:
    """Load every tensor of `net` from `state` except the `skip` modules (the new head), or fail
    naming the keys that do not fit."""
    own = net.state_dict()
    skipped = tuple(f"{name}." for name in skip)
    state = {k: v for k, v in state.items() if not k.startswith(skipped)}
    missing = [k for k in own if k not in state and not k.startswith(skipped)]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or wrong_shape:
        raise ConfigError(
            f"weights from {source} do not fit {type(net).__name__}: "
            f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}, "
            f"shape mismatches {wrong_shape[:8]}"
        )
    net.load_state_dict(state, strict=False)
