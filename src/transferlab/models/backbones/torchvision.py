"""`backbone=torchvision` (and its named configs, `backbone=resnet18`, ...): any classifier of
`torchvision.models`, with a new head and a stage map.

What differs between torchvision families is data, in `FAMILIES`: per network class, the rule that
splits its body into stages, where its classifier layer is, the arguments it must be built with,
the tensors of its pretrained weights it does not use, and a hint for image sizes it refuses.
A family not in the table gets the generic rules (each block of `features`, else each top-level
child). Adding a family is one entry.
"""

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision import models as tvm

from transferlab.errors import ConfigError
from transferlab.models.backbones.base import (
    HEAD,
    Backbone,
    StageItem,
    Stages,
    StateDict,
    check_covers,
    load_state_dict_file,
    stage_parameters,
)
from transferlab.normalization import Normalization


def torchvision_models() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


# --- stage rules ------------------------------------------------------------------------------


def _has_params(items: Iterable[StageItem]) -> bool:
    return bool(stage_parameters(items))


def split_at_pools(features: nn.Sequential) -> Stages:
    """VGG / AlexNet / SqueezeNet: each block ends at (and includes) its max-pool."""
    stages: Stages = {}
    block: list[StageItem] = []
    for layer in features:
        block.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages[f"block{len(stages) + 1}"] = block
            block = []
    if block:
        stages[f"block{len(stages) + 1}"] = block
    return stages


def resnet_body(net: tvm.ResNet) -> Stages:
    stages: Stages = {"stem": [net.conv1, net.bn1, net.relu, net.maxpool]}
    return stages | {f"layer{i}": [getattr(net, f"layer{i}")] for i in range(1, 5)}


def densenet_body(net: tvm.DenseNet) -> Stages:
    stages: Stages = {"stem": []}
    current = stages["stem"]
    for name, layer in net.features.named_children():
        if name.startswith("denseblock"):
            current = stages[f"block{name.removeprefix('denseblock')}"] = []
        current.append(layer)
    return stages


def vit_body(net: tvm.VisionTransformer) -> Stages:
    # The class token and position embedding sit on modules that also hold other stages.
    stem = [net.conv_proj, net.class_token, net.encoder.pos_embedding, net.encoder.dropout]
    return {"stem": stem} | {f"block{i}": [layer] for i, layer in enumerate(net.encoder.layers, 1)}


def pool_into_head(net: nn.Module) -> str:
    """VGG / AlexNet with `pre_logits=drop`: global average pooling of the last conv's channels
    straight into the head, in place of the ImageNet-shaped MLP (VGG16: 120M of its 138M
    parameters). At small inputs that MLP sees the last map copied to 7x7, so each of its input
    weights is trained 49 times over: a scratch VGG16-bn at 32 px stayed at chance at LR 0.01."""
    channels = [m.out_channels for m in net.features.modules() if isinstance(m, nn.Conv2d)][-1]
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Linear(channels, 1)  # replaced by the new head
    return "classifier"


def mnasnet_body(net: tvm.MNASNet) -> Stages:
    # Three conv-BN(-ReLU) layers, six stacks of blocks, a 1x1 conv-BN-ReLU.
    layers = list(net.layers)
    stacks = {f"stack{i}": [m] for i, m in enumerate(layers[8:14], 1)}
    return {"stem": layers[:8]} | stacks | {"conv_head": layers[14:]}


def features_body(net: nn.Module, head_path: str) -> Stages:
    """The generic rules: each block of a `features` Sequential (MobileNet, EfficientNet,
    ConvNeXt, Swin, ...), else each top-level child that has parameters and is not the head's."""
    if isinstance(getattr(net, "features", None), nn.Sequential):
        return {f"features.{i}": [m] for i, m in enumerate(net.features)}
    top = head_path.split(".")[0]
    return {n: [m] for n, m in net.named_children() if n != top and _has_params([m])}


# --- the family table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    body: Callable[[nn.Module], Stages] | None = None  # None: `features_body`
    head: str | None = None  # the classifier layer's path; None: the last Linear
    build_args: dict = field(default_factory=dict)  # constructor arguments it always gets
    unused_weights: tuple[str, ...] = ()  # pretrained tensors (prefixes) this build lacks
    size_hint: str = ""  # appended to the "cannot take NxN images" error; {name}, {size} filled
    drop_pre_logits: Callable[[nn.Module], str] | None = None  # pre_logits=drop; returns the head's path


_AUXLESS = {"aux_logits": False, "transform_input": True, "init_weights": True}

FAMILIES: dict[type, Family] = {
    tvm.ResNet: Family(body=resnet_body),
    tvm.VGG: Family(body=lambda net: split_at_pools(net.features), drop_pre_logits=pool_into_head),
    tvm.AlexNet: Family(body=lambda net: split_at_pools(net.features), drop_pre_logits=pool_into_head),
    # A 1x1 conv is its classifier: one output channel per class, then pooling.
    tvm.SqueezeNet: Family(body=lambda net: split_at_pools(net.features), head="classifier.1"),
    tvm.DenseNet: Family(body=densenet_body),
    tvm.RegNet: Family(body=lambda net: {"stem": [net.stem]}
                       | {name: [b] for name, b in net.trunk_output.named_children()}),
    tvm.MNASNet: Family(body=mnasnet_body),
    tvm.MaxVit: Family(
        body=lambda net: {"stem": [net.stem]} | {f"block{i}": [b] for i, b in enumerate(net.blocks, 1)},
        size_hint=". MaxViT is built for one input size: +backbone.input_size=[N,N] builds it for yours",
    ),
    tvm.VisionTransformer: Family(
        body=vit_body,
        size_hint=(". {name} is built for one image size: set data.image_size={size}, or build it "
                   "for yours with +backbone.image_size=N (ImageNet weights then no longer fit its "
                   "position embedding)"),
    ),
    # Built without their auxiliary classifiers, so training returns one logits tensor; with
    # `transform_input`, the fixed affine map of the input their ImageNet weights expect, so the
    # same network is built whatever the init.
    tvm.GoogLeNet: Family(build_args=_AUXLESS, unused_weights=("aux1.", "aux2.")),
    tvm.Inception3: Family(build_args=_AUXLESS, unused_weights=("AuxLogits.",)),
}


def family_of(net_class: type) -> Family:
    """The table's entry for a network class, or for the nearest base class that has one."""
    return next((FAMILIES[c] for c in net_class.__mro__ if c in FAMILIES), Family())


def builder_class(name: str) -> type:
    """The network class torchvision's builder `name` returns, without building it."""
    return torchvision.models.get_model_builder(name).__annotations__.get("return") or nn.Module


# --- pretrained weights -----------------------------------------------------------------------


def torchvision_weights(name: str, weights: str) -> torchvision.models.WeightsEnum:
    enum = torchvision.models.get_model_weights(name)
    try:
        return enum[weights]
    except KeyError:
        names = ["DEFAULT", *enum.__members__]
        raise ConfigError(
            f"init.weights={weights!r} is not a weights name of {name}; choose one of {names}"
        ) from None


def torchvision_state(name: str, weights: str) -> tuple[StateDict, str]:
    return weights_state(torchvision_weights(name, weights), name)


def weights_state(found: torchvision.models.WeightsEnum, name: str) -> tuple[StateDict, str]:
    """The tensors of torchvision weights `found` (for network `name`), from TORCH_HOME's cache
    or downloaded, and where they came from."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(found.url).path).name
    if cached.is_file():
        return load_state_dict_file(cached), f"{name} {found} ({cached})"
    try:
        return found.get_state_dict(progress=False, weights_only=True), f"{name} {found}"
    except OSError as err:  # URLError, socket errors: offline
        raise ConfigError(
            f"pretrained weights {found} are not cached and could not be downloaded ({err}). "
            f"Place the file {cached} (from {found.url}; TORCH_HOME moves the cache), "
            "or pass init.weights_path=/path/to/state_dict.pth, "
            "or train without ImageNet weights: init=he or init=default."
        ) from err


def torchvision_normalization(name: str, weights: str) -> Normalization:
    preset = torchvision_weights(name, weights).transforms()
    return tuple(preset.mean), tuple(preset.std)


class TorchvisionWeights(Backbone):
    """Pretrained weights from torchvision's Weights of the architecture `name`."""

    @classmethod
    def weights_normalization(cls, name, weights):
        return torchvision_normalization(name, weights)

    def pretrained_state(self, weights):
        return torchvision_state(self.name, weights)


# --- the backbone -----------------------------------------------------------------------------


def _leftovers(net: nn.Module, placed: set[int], head: nn.Module) -> list[nn.Module]:
    """Modules outside every stage and the head: the largest ones that hold nothing placed."""
    inside = set(placed) | {id(head)}

    def holds_placed(module: nn.Module) -> bool:
        return any(id(m) in inside for m in module.modules())

    rest: list[nn.Module] = []

    def walk(module: nn.Module) -> None:
        for child in module.children():
            if id(child) in inside:
                continue
            if holds_placed(child):
                walk(child)
            else:
                rest.append(child)

    walk(net)
    return rest


def fresh_layer_like(old: nn.Module, outputs: int) -> nn.Module:
    """A new, randomly initialised classifier layer of `old`'s kind with `outputs` outputs."""
    if isinstance(old, nn.Conv2d):
        return nn.Conv2d(old.in_channels, outputs, kernel_size=1)
    return nn.Linear(old.in_features, outputs, bias=old.bias is not None)


class TorchvisionBackbone(TorchvisionWeights):
    """Any model of `torchvision.models.list_models(module=torchvision.models)`, built with
    `get_model` (random weights; the `init` group decides the start) and a new head for
    `num_classes`. Extra arguments go to the constructor, e.g. `+backbone.image_size=64` for ViT.
    `pre_logits="drop"` removes the layers between the body and the head where the family has a
    rule for it (VGG, AlexNet); their pretrained tensors then go unused."""

    def __init__(self, name: str, num_classes: int, pre_logits: str = "keep", **kwargs):
        known = torchvision_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown backbone {name!r}: not a torchvision classification model{hint} "
                "(transferlab-backbones lists them; backbone=timm takes timm models)"
            )
        if pre_logits not in ("keep", "drop"):
            raise ConfigError(f"backbone.pre_logits={pre_logits!r}: choose keep or drop")
        self.name = name
        self.family = family_of(builder_class(name))
        self.net = torchvision.models.get_model(name, weights=None, **self.family.build_args | kwargs)
        self.family = family_of(type(self.net))
        if pre_logits == "drop":
            self.head_path = self._drop_pre_logits()
        else:
            self.head_path = self.family.head or self._last_linear()
        self.net.set_submodule(self.head_path, fresh_layer_like(self.head, num_classes))

    def _drop_pre_logits(self) -> str:
        drop = self.family.drop_pre_logits
        if drop is None:
            raise ConfigError(
                f"backbone.pre_logits=drop: {self.name} ({type(self.net).__name__}) has no rule for it; "
                "VGG and AlexNet have one (their MLP between the conv body and the head)"
            )
        return drop(self.net)

    def _last_linear(self) -> str:
        linears = [n for n, m in self.net.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"{type(self.net).__name__} has no Linear layer to replace with a new head")
        return linears[-1]

    def stages(self) -> Stages:
        body = self.family.body
        stages = body(self.net) if body else features_body(self.net, self.head_path)
        placed = {id(item) for items in stages.values() for item in items}
        rest = _leftovers(self.net, placed, self.head)
        # Layers between the body and the head (VGG's 4096-wide FCs, ConvNeXt's norm) form a
        # stage of their own; parameter-free ones (pooling, dropout before the head) travel with
        # the head.
        if _has_params(rest):
            stages["classifier"] = rest
            stages[HEAD] = [self.head]
        else:
            stages[HEAD] = [*rest, self.head]
        check_covers(self.net, stages)
        return stages

    def map_pretrained(self, state):
        unused = self.family.unused_weights
        return {k: v for k, v in state.items() if not k.startswith(unused)}, (self.head_path,)

    def size_hint(self):
        size = getattr(self.net, "image_size", "")
        return self.family.size_hint.format(name=self.name, size=size)
