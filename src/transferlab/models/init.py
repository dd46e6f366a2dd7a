"""The `init` group: where a network's starting weights come from."""

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from transferlab.errors import ConfigError
from transferlab.models.backbones import head_name

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DefaultInit:
    """torchvision's own random initialisation, as the constructor left it."""

    name = "default"

    def __call__(self, net: nn.Module, arch: str) -> None:
        pass

    def normalization(self, arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return IMAGENET_MEAN, IMAGENET_STD


class HeInit(DefaultInit):
    """Kaiming-normal conv and linear weights, zero biases, norm layers at weight 1 / bias 0."""

    name = "he"

    def __call__(self, net: nn.Module, arch: str) -> None:
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
    """torchvision Weights (cached under TORCH_HOME) or a local state_dict file.

    The new head keeps its fresh init; everything else must load, or the run stops: a silent
    fallback to random weights would make every comparison meaningless.
    """

    name = "pretrained"

    def __init__(self, weights: str = "DEFAULT", weights_path: str | None = None):
        self.weights = weights
        self.weights_path = weights_path

    def torchvision_weights(self, arch: str) -> torchvision.models.WeightsEnum:
        enum = torchvision.models.get_model_weights(arch)
        try:
            return enum[self.weights]
        except KeyError:
            names = ["DEFAULT", *enum.__members__]
            raise ConfigError(
                f"init.weights={self.weights!r} is not a weights name of {arch}; choose one of {names}"
            ) from None

    def normalization(self, arch: str):
        if self.weights_path is not None:
            return IMAGENET_MEAN, IMAGENET_STD
        preset = self.torchvision_weights(arch).transforms()
        return tuple(preset.mean), tuple(preset.std)

    def state_dict(self, arch: str) -> dict[str, torch.Tensor]:
        if self.weights_path is not None:
            return load_state_dict_file(self.weights_path)
        weights = self.torchvision_weights(arch)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        if cached.is_file():
            return load_state_dict_file(cached)
        try:
            return weights.get_state_dict(progress=False, weights_only=True)
        except OSError as err:  # URLError, socket errors: offline
            raise ConfigError(
                f"pretrained weights {weights} are not cached and could not be downloaded ({err}). "
                f"Place the file {cached} (from {weights.url}; TORCH_HOME moves the cache), "
                "or pass init.weights_path=/path/to/state_dict.pth, "
                "or train without ImageNet weights: init=he or init=default."
            ) from err

    def __call__(self, net: nn.Module, arch: str) -> None:
        state = self.state_dict(arch)
        if hasattr(net, "pretrained_state"):
            # A network that is no torchvision classifier (the U-Net) maps the weights onto its
            # own names and says which of its modules start fresh.
            state, fresh = net.pretrained_state(state)
        else:
            fresh = (head_name(net),)
        load_matching(net, state, source=self.weights_path or f"{arch} {self.weights}", skip=fresh)
        log.info("loaded pretrained weights for %s from %s", arch, self.weights_path or self.weights)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for code-running pickles, RuntimeError for junk
        raise ConfigError(
            f"cannot load weights file {path} with weights_only=True "
            f"(only plain tensors are accepted, never pickled code): {err}"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        # A Lightning checkpoint: the network's tensors sit under the module's `net.` prefix.
        state = {k.removeprefix("net."): v for k, v in state["state_dict"].items()}
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path} holds a {type(state).__name__}, not a state_dict")
    return state


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
