"""Feature pyramids for `transferlab.models.unet.UNet`: the maps a classifier computes on the way
down, one per resolution, shallow to deep.

- torchvision: the classifier (any of `torchvision.models`) and its stage map as classification
  uses it; its stage modules run once on a meta tensor to see each one's output size, the last
  module at each reduction gives the map, and the forward pass is traced with torch.fx (every
  stage module kept whole) and cut after the deepest one. Parameter names stay the classifier's
  (`layer1.0.conv1.weight`), so its state_dict loads as is.
- timm (`timm:<name>`): the model's own `features_only=True` net, whose `feature_info` gives the
  channels and reductions; stages end at each feature module.

Either way the encoder's stages are lists of module paths inside it, resolved on every
`stages()` call (a converted layer, SyncBatchNorm, is seen).
"""

from dataclasses import dataclass, field
from itertools import chain

import torch
import torch.fx
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from transferlab.errors import ConfigError
from transferlab.models.backbones.base import HEAD, eval_mode
from transferlab.models.backbones.timm import import_timm
from transferlab.models.backbones.torchvision import TorchvisionBackbone

TIMM = "timm:"
PROBE = (256, 384)  # height != width: a channels-last map cannot pass for an NCHW one


@dataclass
class Pyramid:
    module: nn.Module  # returns the maps, shallow to deep
    channels: tuple[int, ...]
    reductions: tuple[int, ...]  # each a power of two, increasing
    stages: dict[str, list[str]] = field(default_factory=dict)  # stage -> module paths inside it
    build_args: dict = field(default_factory=dict)  # what timm's pretrained build needs too


def build_pyramid(encoder: str, **kwargs) -> Pyramid:
    if encoder.startswith(TIMM):
        return timm_pyramid(encoder.removeprefix(TIMM), **kwargs)
    return torchvision_pyramid(encoder, **kwargs)


# --- torchvision ------------------------------------------------------------------------------


def reduction_of(shape, size: tuple[int, int]) -> int | None:
    """The power of two k such that `shape` is an (N, C, H/k, W/k) map of an HxW input, else None."""
    if shape is None or len(shape) != 4 or not shape[-2] or not shape[-1]:
        return None
    height, width = size[0] / shape[-2], size[1] / shape[-1]
    exact = height == width and height.is_integer() and height >= 1
    return int(height) if exact and int(height) & (int(height) - 1) == 0 else None


def pyramid_levels(name: str, items: list[tuple[str, bool, tuple | None]],
                   size: tuple[int, int] = PROBE) -> list[tuple[str, int, int]]:
    """(path, channels, reduction) of each map of the pyramid, shallow to deep, from the body's
    modules in forward order as (path, has parameters, output shape or None if it never ran):
    the last module at each reduction, up to the reduction of the last module with parameters
    (VGG's final max-pool adds nothing but a halving)."""
    levels: dict[int, tuple[str, int]] = {}
    deepest = 0
    for path, has_params, shape in items:
        if shape is None:
            continue
        reduction = reduction_of(shape, size)
        if reduction is None:
            if has_params:
                raise ConfigError(
                    f"{name} has no NCHW feature pyramid for a U-Net encoder: {path} outputs "
                    f"{tuple(shape)} for a 3x{size[0]}x{size[1]} image (token sequences, "
                    "channels-last maps or unpadded convolutions); pick a convolutional "
                    "classifier (resnet34, efficientnet_b0, ...) or a timm model (timm:<name>)")
            continue
        if levels and reduction < max(levels):
            raise ConfigError(f"{name}: {path} upsamples ({reduction} after {max(levels)}); "
                              "a U-Net encoder must only go down in resolution")
        levels[reduction] = (path, shape[1])
        if has_params:
            deepest = reduction
    kept = [(path, channels, r) for r, (path, channels) in sorted(levels.items()) if r <= deepest]
    if len(kept) < 2:
        raise ConfigError(f"{name} has maps at one resolution only ({[r for *_, r in kept]}): "
                          "no feature pyramid for a U-Net encoder")
    return kept


def body_stages(classifier: TorchvisionBackbone) -> dict[str, list[tuple[str, nn.Module]]]:
    """The classifier's stages below its classifier layers, as (path, module) in forward order."""
    paths = {id(m): n for n, m in classifier.net.named_modules()}
    return {name: [(paths[id(m)], m) for m in items if isinstance(m, nn.Module)]
            for name, items in classifier.stages().items() if name not in ("classifier", HEAD)}


def output_shapes(net: nn.Module, modules: list[tuple[str, nn.Module]],
                  size: tuple[int, int]) -> dict[str, tuple]:
    """Each module's output shape (its first call) for one image, on the meta device: shapes
    only, no arithmetic, no copy of the weights."""
    shapes: dict[str, tuple] = {}

    def seen(path: str):
        def hook(_module, _args, output) -> None:  # returns None: the output goes on unchanged
            shapes.setdefault(path, tuple(getattr(output, "shape", ())))
        return hook

    hooks = [m.register_forward_hook(seen(path)) for path, m in modules]
    tensors = dict(chain(net.named_parameters(), net.named_buffers()))
    meta = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
    try:
        with eval_mode(net), torch.no_grad():
            torch.func.functional_call(net, meta, (torch.empty(1, 3, *size, device="meta"),))
    except (RuntimeError, ValueError, AssertionError) as err:
        raise ConfigError(f"{type(net).__name__} cannot run on a 3x{size[0]}x{size[1]} image to "
                          f"find its feature pyramid: {str(err).splitlines()[0]}") from None
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


class _KeepWhole(torch.fx.Tracer):
    def __init__(self, leaves: set[int]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return id(module) in self.leaves or super().is_leaf_module(module, qualified_name)


def traced_until(net: nn.Module, leaves: set[int], outputs: list[str],
                 name: str) -> torch.fx.GraphModule:
    """`net`'s forward pass returning the outputs of modules `outputs` (a list), nothing after."""
    try:
        graph = _KeepWhole(leaves).trace(net)
    except Exception as err:  # fx raises many types on untraceable Python
        raise ConfigError(f"{name} cannot be traced to take its feature pyramid: {err}") from None
    calls: dict[str, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    twice = [p for p in outputs if len(calls.get(p, [])) != 1]
    if twice:
        raise ConfigError(f"{name}: modules {twice} do not run exactly once in its forward pass")
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = ([calls[p][0] for p in outputs],)
    encoder = torch.fx.GraphModule(net, graph, class_name=f"{type(net).__name__}Pyramid")
    encoder.graph.eliminate_dead_code()
    encoder.delete_all_unused_submodules()  # the classifier layers: not in the encoder's state
    encoder.recompile()
    return encoder


def classifier_levels(classifier: TorchvisionBackbone):
    """The classifier's body stages, their modules in forward order, and its pyramid's levels."""
    stages = body_stages(classifier)
    modules = [item for items in stages.values() for item in items]
    shapes = output_shapes(classifier.net, modules, PROBE)
    items = [(path, any(True for _ in m.parameters()), shapes.get(path)) for path, m in modules]
    return stages, modules, pyramid_levels(classifier.name, items)


def torchvision_pyramid(name: str, **kwargs) -> Pyramid:
    classifier = TorchvisionBackbone(name, 1, **kwargs)
    stages, modules, levels = classifier_levels(classifier)
    encoder = traced_until(classifier.net, {id(m) for _, m in modules}, [p for p, *_ in levels], name)
    inside = {n for n, _ in encoder.named_modules()}
    kept = {stage: [p for p, _ in items if p in inside] for stage, items in stages.items()}
    return Pyramid(encoder, tuple(c for _, c, _ in levels), tuple(r for *_, r in levels),
                   {stage: paths for stage, paths in kept.items() if paths})


def _parameter_on_meta(module, name, param):
    return None if param is None else nn.Parameter(param.to("meta"), param.requires_grad)


def pyramid_problem(name: str) -> str | None:
    """Why torchvision classifier `name` cannot be a U-Net encoder, or None if it can: checked
    with its parameters on the meta device (no weight memory, no initialisation, no arithmetic).
    Each parameter moves to meta as it is registered: RegNet's builder computes its widths with
    tensors, which a meta device context would make unanswerable."""
    handle = register_module_parameter_registration_hook(_parameter_on_meta)
    try:
        classifier = TorchvisionBackbone(name, 1)
    finally:
        handle.remove()
    try:
        classifier_levels(classifier)
    except ConfigError as err:
        return str(err)
    return None


# --- timm -------------------------------------------------------------------------------------


def forward_items(net: nn.Module, ends: list[str]) -> list[str]:
    """`net`'s modules from the top, opened where a stage ends inside one (EfficientNet's
    `blocks.2` inside `blocks`), in registration order, which timm's feature nets run them in."""
    items = []

    def walk(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            path = prefix + child_name
            if any(end.startswith(path + ".") for end in ends):
                walk(path + ".", child)
            else:
                items.append(path)

    walk("", net)
    return items


def timm_stages(net: nn.Module, ends: list[str], names: list[str]) -> dict[str, list[str]]:
    """One stage per feature map: the modules after the previous one's, up to its own."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for path in forward_items(net, ends):
        current.append(path)
        if path in ends:
            stages[names[ends.index(path)]] = current
            current = []
    if current and stages:  # modules after the deepest map (none in timm's own feature nets)
        stages[list(stages)[-1]] += current
    return stages


def timm_pyramid(name: str, **kwargs) -> Pyramid:
    timm = import_timm()
    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"unknown timm model {name!r} for backbone.encoder=timm:<name> "
                          "(transferlab-backbones 'pattern*' lists them)")
    try:
        net = timm.create_model(name, features_only=True, pretrained=False, **kwargs)
        info = net.feature_info
        # One map per reduction: the deepest module of each (some models report two at 1/32).
        last = {r: i for i, r in enumerate(info.reduction())}
        if len(last) < len(info.reduction()):
            kwargs["out_indices"] = tuple(info.out_indices[i] for i in sorted(last.values()))
            net = timm.create_model(name, features_only=True, pretrained=False, **kwargs)
            info = net.feature_info
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:
        raise ConfigError(
            f"timm model {name} has no features_only net for a U-Net encoder: {err}") from None
    reductions = tuple(info.reduction())
    if len(reductions) < 2 or any(r & (r - 1) for r in reductions):
        raise ConfigError(f"timm model {name} has maps at reductions {list(reductions)}: no "
                          "feature pyramid of halvings for a U-Net encoder")
    names = info.module_name()
    # timm's FeatureListNet flattens `stages.0` into a child `stages_0`; its return_layers say so.
    ends = list(getattr(net, "return_layers", None) or names)
    return Pyramid(net, tuple(info.channels()), reductions, timm_stages(net, ends, names), kwargs)


def timm_names(key: str, state: dict) -> str | None:
    """The key of `state` that holds encoder tensor `key`: the same, or (for a timm classifier's
    state_dict) with the feature net's flattened first part (`stages_0`) as a path (`stages.0`)."""
    if key in state:
        return key
    first, _, rest = key.partition(".")
    for i, char in enumerate(first):
        if char == "_":
            candidate = f"{first[:i]}.{first[i + 1:]}.{rest}"
            if candidate in state:
                return candidate
    return None
