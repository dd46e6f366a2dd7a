"""The `init` group: where a network's starting weights come from."""

import logging
from pathlib import Path

import torch
from torch import nn

from transferlab.errors import ConfigError
from transferlab.models.backbones import Backbone, load_weights_file
from transferlab.normalization import IMAGENET_MEAN, IMAGENET_STD, Normalization
from transferlab.summary import best_checkpoint

log = logging.getLogger(__name__)


class DefaultInit:
    """The architecture's own random initialisation, as its constructor left it.

    `weights` / `weights_path` are `init=pretrained`'s; every init takes them and only that one
    reads them, so one sweep compares a source with random weights as typed:
    `-m init=he,pretrained init.weights_path=<source run dir>`.
    """

    name = "default"

    def __init__(self, weights: str | None = None, weights_path: str | None = None):
        self.weights = weights
        self.weights_path = weights_path

    def __call__(self, backbone: Backbone) -> None:
        self.say_unused()

    def say_unused(self) -> None:
        if self.weights_path is not None:
            log.info("init=%s starts from random weights: init.weights_path=%s is init=pretrained's",
                     self.name, self.weights_path)

    def normalization(self, backbone: type[Backbone], name: str) -> Normalization:
        """The mean/std the data is normalised with: ImageNet's, unless weights say otherwise."""
        return IMAGENET_MEAN, IMAGENET_STD


class HeInit(DefaultInit):
    """Kaiming-normal conv and linear weights, zero biases, norm layers at weight 1 / bias 0."""

    name = "he"

    def __call__(self, backbone: Backbone) -> None:
        self.say_unused()
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
    TORCH_HOME / the Hugging Face cache), or a local file: a state_dict, a transferlab checkpoint,
    or a transferlab run dir (a source model: its best checkpoint, and its own normalisation).

    The new head keeps its fresh init, whatever the source's class count; everything else must
    load, or the run stops: a silent fallback to random weights would make every comparison
    meaningless.
    """

    name = "pretrained"

    def __init__(self, weights: str = "DEFAULT", weights_path: str | None = None):
        super().__init__(weights, weights_path)
        self._source: tuple[dict, dict | None, str] | None = None

    def source(self) -> tuple[dict, dict | None, str]:
        """The weights file's tensors, its transferlab hyperparameters (None for a plain
        state_dict) and how to name it; read once."""
        if self._source is None:
            path = Path(self.weights_path).expanduser()
            if path.is_dir():
                found = best_checkpoint(path)
                if found is None:
                    raise ConfigError(
                        f"init.weights_path={path} is a dir without a best checkpoint "
                        "(checkpoints/best-epochNNN.ckpt): pass a finished transferlab run dir, a "
                        ".ckpt, or a state_dict file")
                path = found
            state, hparams = load_weights_file(path)
            backbone = (hparams or {}).get("backbone") or {}
            what = f"{path} (a {backbone.get('name', '?')} run)" if hparams else str(path)
            self._source = state, hparams, what
        return self._source

    def normalization(self, backbone, name):
        if self.weights_path is None:
            return backbone.weights_normalization(name, self.weights)
        _, hparams, what = self.source()
        preprocess = (hparams or {}).get("preprocess")
        if preprocess:  # a source model: its images were normalised its own way
            return tuple(preprocess["mean"]), tuple(preprocess["std"])
        log.info("init.weights_path=%s carries no normalisation: ImageNet's mean and std", what)
        return IMAGENET_MEAN, IMAGENET_STD

    def __call__(self, backbone: Backbone) -> None:
        if self.weights_path is not None:
            state, _, source = self.source()
        else:
            state, source = backbone.pretrained_state(self.weights)
        state, fresh = backbone.map_pretrained(state)
        load_matching(backbone.net, state, source=source, skip=fresh, target=backbone.name)
        log.info("loaded pretrained weights for %s from %s", backbone.name, source)


def load_matching(net: nn.Module, state: dict[str, torch.Tensor], source: str,
                  skip: tuple[str, ...] = (), target: str | None = None) -> None:
    """Load every tensor of `net` from `state` except the `skip` modules (the new head), or fail
    naming both networks and the keys that do not fit."""
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
        name = f"{target} ({type(net).__name__})" if target else type(net).__name__
        raise ConfigError(
            f"weights from {source} do not fit {name}: "
            f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}, "
            f"shape mismatches {wrong_shape[:8]}"
        )
    net.load_state_dict(state, strict=False)
