"""Stage maps: each family's ordered stages from input to head, the unit every freeze strategy
works on. A stage is a list of modules; the last stage is always `head`."""

from torch import nn
from torchvision import models as tvm

from transferlab.errors import ConfigError
from transferlab.models.backbones import head_name

Stages = dict[str, list[nn.Module]]


def _has_params(modules: list[nn.Module]) -> bool:
    return any(True for m in modules for _ in m.parameters())


def _split_at_pools(features: nn.Sequential) -> Stages:
    """VGG / AlexNet conv blocks: each block ends at (and includes) its max-pool."""
    stages: Stages = {}
    block: list[nn.Module] = []
    for layer in features:
        block.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages[f"block{len(stages) + 1}"] = block
            block = []
    if block:
        stages[f"block{len(stages) + 1}"] = block
    return stages


def _densenet_blocks(features: nn.Sequential) -> Stages:
    stages: Stages = {"stem": []}
    current = stages["stem"]
    for name, layer in features.named_children():
        if name.startswith("denseblock"):
            current = stages[f"block{name.removeprefix('denseblock')}"] = []
        current.append(layer)
    return stages


def _body(net: nn.Module) -> tuple[Stages, set[str]]:
    """Family-specific stages below the classifier, and the top-level children they use."""
    if isinstance(net, tvm.ResNet):
        stem = ["conv1", "bn1", "relu", "maxpool"]
        stages = {"stem": [getattr(net, n) for n in stem]}
        stages |= {f"layer{i}": [getattr(net, f"layer{i}")] for i in range(1, 5)}
        return stages, set(stem) | {f"layer{i}" for i in range(1, 5)}
    if isinstance(net, (tvm.VGG, tvm.AlexNet)):
        return _split_at_pools(net.features), {"features"}
    if isinstance(net, tvm.DenseNet):
        return _densenet_blocks(net.features), {"features"}
    if isinstance(getattr(net, "features", None), nn.Sequential):
        # MobileNet, EfficientNet, ConvNeXt, Swin, ...: each feature block is a stage.
        return {f"features.{i}": [m] for i, m in enumerate(net.features)}, {"features"}
    # Anything else: each top-level child that has parameters and does not hold the head.
    head = head_name(net).split(".")[0]
    stages = {n: [m] for n, m in net.named_children() if n != head and _has_params([m])}
    return stages, set(stages)


def stage_map(net: nn.Module) -> Stages:
    stages, used = _body(net)
    head_path = head_name(net)
    head = net.get_submodule(head_path)
    rest: list[nn.Module] = []
    for name, child in net.named_children():
        if name in used or child is head:
            continue
        if head_path.startswith(name + "."):
            rest.extend(m for m in child.children() if m is not head)
        else:
            rest.append(child)
    # Layers between the body and the head (VGG's 4096-wide FCs, ConvNeXt's norm) form a stage of
    # their own; parameter-free ones (pooling, dropout before the head) travel with the head.
    if _has_params(rest):
        stages["classifier"] = rest
        stages["head"] = [head]
    else:
        stages["head"] = [*rest, head]
    _check_covers(net, stages)
    return stages


def _check_covers(net: nn.Module, stages: Stages) -> None:
    staged = {id(p) for modules in stages.values() for p in stage_parameters(modules)}
    loose = [n for n, p in net.named_parameters() if id(p) not in staged]
    if loose:
        raise ConfigError(
            f"no stage map for {type(net).__name__}: parameters {loose[:5]} belong to no stage, "
            "so freeze strategies cannot handle them"
        )


def stage_parameters(modules: list[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for p in module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())
