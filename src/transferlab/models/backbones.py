"""The `backbone` group: every network transferlab fine-tunes, behind one protocol.

A `Backbone` builds its network and answers what the rest of transferlab asks about it:
- `stages()`: ordered stages from input to head, the unit of every freeze strategy. A stage is a
  list of modules (whose train/eval mode follows the stage) and loose parameters (ViT's class
  token, which belongs to no module of its own); the last stage is always `head`;
- `head_path`: the module that replaced the original classifier and starts fresh;
- `forward_features` / `forward_head`: the head's input, and the head on it (the feature cache);
- `weights_normalization` / `pretrained_state` / `map_pretrained`: where pretrained weights come
  from, the mean/std they were trained with, and how their names map onto this network's.

A family is one subclass: torchvision classifiers, timm models, the VGG16-bn U-Net.
"""

import difflib
import os
from collections.abc import Iterable
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import torch
import torch.fx
import torchvision
from torch import nn
from torchvision import models as tvm

from transferlab.errors import ConfigError

HEAD = "head"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

StageItem = nn.Module | nn.Parameter
Stages = dict[str, list[StageItem]]
StateDict = dict[str, torch.Tensor]
Normalization = tuple[tuple[float, ...], tuple[float, ...]]


class CachedInputs(NamedTuple):
    """A batch of the feature cache's: the output of the frozen stages up to and including
    `cut` (`head`: everything below the head, i.e. the head's input) instead of images."""

    features: torch.Tensor
    target: torch.Tensor
    cut: str = HEAD


class _Reached(Exception):
    """Ends a forward pass once the output it was run for exists."""


def stage_parameters(items: Iterable[StageItem]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for item in items:
        params = [item] if isinstance(item, nn.Parameter) else item.parameters()
        for p in params:
            seen.setdefault(id(p), p)
    return list(seen.values())


def stage_modules(items: Iterable[StageItem]) -> list[nn.Module]:
    return [item for item in items if isinstance(item, nn.Module)]


@contextmanager
def eval_mode(net: nn.Module):
    """Every submodule in eval mode inside the block, each back in its own mode after."""
    modes = {m: m.training for m in net.modules()}
    net.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


class _StageTracer(torch.fx.Tracer):
    """Traces through containers but keeps every stage module whole, so a stage's output is one
    node of the graph."""

    def __init__(self, leaves: set[int]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return id(module) in self.leaves or super().is_leaf_module(module, qualified_name)


class Backbone:
    """A network and what transferlab needs to know to fine-tune it (see the module docstring)."""

    name: str
    net: nn.Module
    head_path: str
    task = "classification"
    _head_replay: list[nn.Module] | None = None
    _tails: dict[str, nn.Module] | None = None

    def stages(self) -> Stages:
        raise NotImplementedError

    @property
    def head(self) -> nn.Module:
        return self.net.get_submodule(self.head_path)

    # --- the feature cache ---------------------------------------------------------------------

    def head_replay(self) -> list[nn.Module]:
        """What runs on a cached head input: the head, after any Dropout of the head stage (it
        drops entries of exactly the cached tensor, so the cached path replays it)."""
        dropouts = [m for m in stage_modules(self.stages()[HEAD])
                    if isinstance(m, nn.modules.dropout._DropoutNd)]
        return [*dropouts, self.head]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input for images `x`, as the forward pass computes it (the head does not
        run)."""
        return self._run_to(self.head, x, its_input=True)

    def _run_to(self, module: nn.Module, x: torch.Tensor, its_input: bool) -> torch.Tensor:
        """The forward pass on `x` as far as `module`: its input or its output, then stop."""
        captured: list[torch.Tensor] = []

        def reached(_module, args, output=None):
            captured.append(args[0] if its_input else output)
            raise _Reached

        if its_input:
            hook = module.register_forward_pre_hook(reached)
        else:
            hook = module.register_forward_hook(reached)
        try:
            self.net(x)
        except _Reached:
            pass
        finally:
            hook.remove()
        return captured[0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        # Resolved once: walking the stage map costs more than the head's step itself.
        if self._head_replay is None:
            self._head_replay = self.head_replay()
        for layer in self._head_replay:
            features = layer(features)
        return features

    # --- cutting the network after a stage (the feature cache of a frozen prefix) ------------

    def forward_until(self, cut: str, x: torch.Tensor) -> torch.Tensor:
        """What the network computes from images `x` up to the end of stage `cut` (`head`: the
        head's input); nothing after it runs."""
        if cut == HEAD:
            return self.forward_features(x)
        return self._run_to(self._cut_module(cut), x, its_input=False)

    def forward_from(self, cut: str, features: torch.Tensor) -> torch.Tensor:
        """The logits from what `forward_until(cut, ...)` returned."""
        if cut == HEAD:
            return self.forward_head(features)
        return self.tail(cut)(features)

    def _cut_module(self, cut: str) -> nn.Module:
        modules = stage_modules(self.stages()[cut])
        if not modules:
            raise ConfigError(f"stage {cut} of {self.name} holds no module whose output could be cached")
        return modules[-1]

    def tail(self, cut: str) -> nn.Module:
        """The network after stage `cut`, as a module taking that stage's output: the forward
        pass traced with torch.fx (every stage module a leaf) and cut at the stage's last
        module. It calls this network's own modules, so training it trains them. Refused when
        something after the cut reads anything computed before it (a skip connection)."""
        if self._tails is None:
            self._tails = {}
        if cut in self._tails:
            return self._tails[cut]
        module = self._cut_module(cut)
        path = next(n for n, m in self.net.named_modules() if m is module)
        leaves = {id(m) for items in self.stages().values() for m in stage_modules(items)}
        try:
            graph = _StageTracer(leaves).trace(self.net)
        except Exception as err:  # fx raises many types on untraceable Python
            raise ConfigError(f"{self.name} cannot be traced to cut it after {cut}: {err}") from None
        [cut_node] = [n for n in graph.nodes if n.op == "call_module" and n.target == path]
        after, stack = set(), [cut_node]
        while stack:
            for user in stack.pop().users:
                if user not in after:
                    after.add(user)
                    stack.append(user)
        tail = torch.fx.Graph()
        copied = {cut_node: tail.placeholder("features")}
        for node in graph.nodes:  # in execution order
            if node not in after:
                continue
            for needed in node.all_input_nodes:
                if needed in copied:
                    continue
                # Parameters and buffers, and optional forward arguments left at their default
                # (timm's attention mask), do not depend on the images.
                optional = needed.op == "placeholder" and bool(needed.args)
                if needed.op != "get_attr" and not optional:
                    raise ConfigError(
                        f"{self.name} cannot run from the output of {cut}: {node.name} also reads "
                        f"{needed.name}, computed before it"
                    )
                copied[needed] = tail.node_copy(needed)
            copied[node] = tail.node_copy(node, copied.__getitem__)
        self._tails[cut] = torch.fx.GraphModule(self.net, tail)
        return self._tails[cut]

    def cache_blocker(self) -> str | None:
        """Why a cached head input would not equal what training computes, or None."""
        replayed = {id(m) for m in self.head_replay()}
        stateful = [type(m).__name__ for m in stage_modules(self.stages()[HEAD])
                    if id(m) not in replayed and any(True for _ in m.buffers())]
        return f"the head stage holds stateful layers {stateful}" if stateful else None

    # --- pretrained weights --------------------------------------------------------------------

    @classmethod
    def weights_normalization(cls, name: str, weights: str) -> Normalization:
        """Mean and std of the images the named pretrained weights were trained on."""
        raise NotImplementedError

    def pretrained_state(self, weights: str) -> tuple[StateDict, str]:
        """The named pretrained weights (from a local cache or downloaded) and where they came from."""
        raise NotImplementedError

    def map_pretrained(self, state: StateDict) -> tuple[StateDict, tuple[str, ...]]:
        """`state` under this network's names, and the modules that keep their fresh init."""
        return state, (self.head_path,)

    # --- input ---------------------------------------------------------------------------------

    def check_image_size(self, size: int) -> None:
        """Fail before training when the network cannot take `size` x `size` images: the forward
        pass runs on meta tensors (shapes only, no arithmetic, no copy of the weights)."""
        tensors = dict(chain(self.net.named_parameters(), self.net.named_buffers()))
        meta = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
        x = torch.empty(2, 3, size, size, device="meta")
        try:
            with eval_mode(self.net), torch.no_grad():
                torch.func.functional_call(self.net, meta, (x,))
        except (RuntimeError, AssertionError, ValueError) as err:
            raise ConfigError(
                f"backbone {self.name} cannot take {size}x{size} images (data.image_size={size}): "
                f"{str(err).splitlines()[0].rstrip('.!')}{self.size_hint()}"
            ) from None

    def size_hint(self) -> str:
        return ""


# --- weight files -----------------------------------------------------------------------------


def load_state_dict_file(path: str | os.PathLike) -> StateDict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":  # timm's and the Hugging Face hub's format
            from safetensors.torch import load_file

            state = load_file(path)
        else:
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



# --- torchvision ------------------------------------------------------------------------------


def torchvision_models() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


# Constructor arguments a family needs so that training returns one logits tensor: GoogLeNet and
# Inception-v3 would return their auxiliary classifiers' outputs too. `transform_input` is what
# torchvision turns on with their ImageNet weights, which expect it; it is a fixed affine map of
# the input, so the same network is built whatever the init.
FAMILY_ARGS = {
    "googlenet": {"aux_logits": False, "transform_input": True, "init_weights": True},
    "inception_v3": {"aux_logits": False, "transform_input": True, "init_weights": True},
}
AUXILIARY = ("aux1.", "aux2.", "AuxLogits.")  # their tensors in the ImageNet weights


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
    found = torchvision_weights(name, weights)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(found.url).path).name
    if cached.is_file():
        return load_state_dict_file(cached), f"{name} {weights} ({cached})"
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


def _has_params(items: Iterable[StageItem]) -> bool:
    return bool(stage_parameters(items))


def _split_at_pools(features: nn.Sequential) -> Stages:
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


def _densenet_blocks(features: nn.Sequential) -> Stages:
    stages: Stages = {"stem": []}
    current = stages["stem"]
    for name, layer in features.named_children():
        if name.startswith("denseblock"):
            current = stages[f"block{name.removeprefix('denseblock')}"] = []
        current.append(layer)
    return stages


def _vit_body(net: tvm.VisionTransformer) -> Stages:
    # The class token and position embedding sit on modules that also hold other stages.
    stem = [net.conv_proj, net.class_token, net.encoder.pos_embedding, net.encoder.dropout]
    stages: Stages = {"stem": stem}
    stages |= {f"block{i}": [layer] for i, layer in enumerate(net.encoder.layers, 1)}
    return stages


def _body(net: nn.Module, head_path: str) -> Stages:
    """Family-specific stages below the classifier."""
    if isinstance(net, tvm.ResNet):
        stages: Stages = {"stem": [net.conv1, net.bn1, net.relu, net.maxpool]}
        return stages | {f"layer{i}": [getattr(net, f"layer{i}")] for i in range(1, 5)}
    if isinstance(net, tvm.VisionTransformer):
        return _vit_body(net)
    if isinstance(net, (tvm.VGG, tvm.AlexNet, tvm.SqueezeNet)):
        return _split_at_pools(net.features)
    if isinstance(net, tvm.DenseNet):
        return _densenet_blocks(net.features)
    if isinstance(net, tvm.RegNet):
        return {"stem": [net.stem]} | {name: [b] for name, b in net.trunk_output.named_children()}
    if isinstance(net, tvm.MNASNet):
        # Three conv-BN(-ReLU) layers, six stacks of blocks, a 1x1 conv-BN-ReLU.
        layers = list(net.layers)
        stacks = {f"stack{i}": [m] for i, m in enumerate(layers[8:14], 1)}
        return {"stem": layers[:8]} | stacks | {"conv_head": layers[14:]}
    if isinstance(net, tvm.MaxVit):
        return {"stem": [net.stem]} | {f"block{i}": [b] for i, b in enumerate(net.blocks, 1)}
    if isinstance(getattr(net, "features", None), nn.Sequential):
        # MobileNet, EfficientNet, ConvNeXt, Swin, ...: each feature block is a stage.
        return {f"features.{i}": [m] for i, m in enumerate(net.features)}
    # Anything else: each top-level child that has parameters and does not hold the head.
    top = head_path.split(".")[0]
    return {n: [m] for n, m in net.named_children() if n != top and _has_params([m])}


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


class TorchvisionWeights(Backbone):
    """Pretrained weights from torchvision's Weights of the architecture `name`."""

    @classmethod
    def weights_normalization(cls, name, weights):
        return torchvision_normalization(name, weights)

    def pretrained_state(self, weights):
        return torchvision_state(self.name, weights)


class TorchvisionBackbone(TorchvisionWeights):
    """Any model of `torchvision.models.list_models(module=torchvision.models)`, built with
    `get_model` (random weights; the `init` group decides the start) and a new head for
    `num_classes`. Extra arguments go to the constructor, e.g. `+backbone.image_size=64` for ViT."""

    def __init__(self, name: str, num_classes: int, **kwargs):
        known = torchvision_models()
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown backbone {name!r}: not a torchvision classification model{hint} "
                "(transferlab-backbones lists them; backbone=timm takes timm models)"
            )
        self.name = name
        self.net = torchvision.models.get_model(name, weights=None, **FAMILY_ARGS.get(name, {}) | kwargs)
        self.head_path = self._find_head()
        self.reset_head(num_classes)

    def _find_head(self) -> str:
        if isinstance(self.net, tvm.SqueezeNet):
            return "classifier.1"  # a 1x1 conv, one output channel per class, then pooling
        linears = [n for n, m in self.net.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"{type(self.net).__name__} has no Linear layer to replace with a new head")
        return linears[-1]

    def reset_head(self, num_classes: int) -> None:
        old = self.head
        if isinstance(old, nn.Conv2d):
            new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
        else:
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        self.net.set_submodule(self.head_path, new)
        self._head_replay = None

    def stages(self) -> Stages:
        stages = _body(self.net, self.head_path)
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

    def forward_features(self, x):
        if isinstance(self.net, tvm.SqueezeNet):
            return self.net.features(x)
        return super().forward_features(x)

    def forward_head(self, features):
        if isinstance(self.net, tvm.SqueezeNet):
            return torch.flatten(self.net.classifier(features), 1)
        return super().forward_head(features)

    def head_replay(self):
        if isinstance(self.net, tvm.SqueezeNet):
            return list(self.net.classifier)
        return super().head_replay()

    def map_pretrained(self, state):
        if self.name in FAMILY_ARGS:  # built without auxiliary classifiers
            state = {k: v for k, v in state.items() if not k.startswith(AUXILIARY)}
        return state, (self.head_path,)

    def size_hint(self):
        if isinstance(self.net, tvm.VisionTransformer):
            return (f". {self.name} is built for one image size: set data.image_size="
                    f"{self.net.image_size}, or build it for yours with +backbone.image_size=N "
                    "(ImageNet weights then no longer fit its position embedding)")
        if isinstance(self.net, tvm.MaxVit):
            return ". MaxViT is built for one input size: +backbone.input_size=[N,N] builds it for yours"
        return ""


def check_covers(net: nn.Module, stages: Stages) -> None:
    staged = {id(p) for items in stages.values() for p in stage_parameters(items)}
    loose = [n for n, p in net.named_parameters() if id(p) not in staged]
    if loose:
        raise ConfigError(
            f"no stage map for {type(net).__name__}: parameters {loose[:5]} belong to no stage, "
            "so freeze strategies cannot handle them"
        )


# --- timm -------------------------------------------------------------------------------------


def import_timm():
    try:
        import timm
    except ImportError:
        raise ConfigError(
            "backbone=timm needs the timm package: pip install 'transferlab[timm]'"
        ) from None
    return timm


def stages_from_groups(net: nn.Module, group_of: dict[str, str], order: list[str]) -> Stages:
    """Stages from a stage name per parameter name: each stage gets the largest modules whose
    parameters all belong to it, and the parameters of modules shared between stages. A module
    without parameters (Dropout, pooling) joins the stage of the module registered before it."""
    stages: Stages = {name: [] for name in order}
    current = order[0]

    def walk(prefix: str, module: nn.Module) -> None:
        nonlocal current
        for name, param in module.named_parameters(recurse=False):
            current = group_of[prefix + name]
            stages[current].append(param)
        for name, child in module.named_children():
            path = prefix + name
            groups = {group_of[f"{path}.{n}"] for n, _ in child.named_parameters()}
            if len(groups) > 1:
                walk(path + ".", child)
                continue
            if groups:
                current = groups.pop()
            stages[current].append(child)

    walk("", net)
    return {name: items for name, items in stages.items() if items}


def _stage_name(index: int, params: list[str], taken: set[str]) -> str:
    """The module path all of a group's parameters share, up to its first numbered part
    (`layer3`, `stages.2`, `s1`, `blocks.11`)."""
    parts = [p.split(".")[:-1] for p in params]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
        if any(c.isdigit() for c in level[0]):
            break
    name = ".".join(common) or ("stem" if index == 0 else ".".join(params[0].split(".")[:2]))
    return name if name not in taken and name != HEAD else f"group{index}"


class TimmBackbone(Backbone):
    """Any `timm` model by name. The head comes from timm's own `reset_classifier`, the stages
    from the model's `group_matcher(coarse=True)`, the normalisation from its pretrained config."""

    def __init__(self, name: str, num_classes: int, **kwargs):
        timm = import_timm()
        if not timm.is_model(name.split(".")[0]):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown timm model {name!r}{hint} (transferlab-backbones --timm 'pattern*' lists them)"
            )
        self.name = name
        self.net = timm.create_model(name, pretrained=False, **kwargs)
        self.net.reset_classifier(num_classes)
        head = self.net.get_classifier()
        self.head_path = next(n for n, m in self.net.named_modules() if m is head)

    def stages(self) -> Stages:
        from timm.models import group_parameters

        groups = group_parameters(self.net, self.net.group_matcher(coarse=True))
        head_params = {f"{self.head_path}.{n}" for n, _ in self.head.named_parameters()}
        group_of, order = {}, []
        for index, params in sorted(groups.items()):
            params = [p for p in params if p not in head_params]
            if not params:
                continue
            name = _stage_name(index, params, set(order))
            order.append(name)
            group_of |= dict.fromkeys(params, name)
        group_of |= dict.fromkeys(head_params, HEAD)
        stages = stages_from_groups(self.net, group_of, [*order, HEAD])
        check_covers(self.net, stages)
        return stages

    def head_replay(self):
        # timm applies its head dropout before the classifier, in a stage below it: whenever the
        # cache is on, that stage is frozen and in eval mode, so the classifier is all that runs.
        return [self.head]

    @classmethod
    def weights_normalization(cls, name, weights):
        timm = import_timm()
        cfg = timm.models.get_pretrained_cfg(_timm_tag(name, weights))
        if cfg is None:
            raise ConfigError(f"timm has no pretrained weights {_timm_tag(name, weights)!r}")
        return tuple(cfg.mean), tuple(cfg.std)

    def pretrained_state(self, weights):
        timm = import_timm()
        tag = _timm_tag(self.name, weights)
        try:
            source = timm.create_model(tag, pretrained=True)
        except Exception as err:  # offline: huggingface_hub and urllib raise several types
            raise ConfigError(
                f"timm weights {tag} are not cached and could not be downloaded "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                "Pass init.weights_path=/path/to/state_dict (a timm .pth/.safetensors state_dict or "
                "a transferlab checkpoint), or train without them: init=he or init=default."
            ) from err
        return source.state_dict(), f"timm {tag}"

    def size_hint(self):
        return (". timm models built for one size take +backbone.img_size=N "
                "(or +backbone.dynamic_img_size=true)")


def _timm_tag(name: str, weights: str) -> str:
    """timm names weights `model.tag`; DEFAULT is the model's default tag."""
    return name if weights == "DEFAULT" or "." in name else f"{name}.{weights}"


# --- the U-Net --------------------------------------------------------------------------------


class UNetBackbone(TorchvisionWeights):
    """U-Net whose encoder is a torchvision classifier's conv layers (vgg16_bn): ImageNet weights
    for the encoder come from that classifier's weights, mapped onto `encoder.*`."""

    task = "segmentation"

    def __init__(self, num_classes: int, name: str = "vgg16_bn"):
        from transferlab.models.unet import UNet

        self.name = name
        self.net = UNet(num_classes, name)
        self.head_path = "segmentation_head"

    def stages(self) -> Stages:
        """block1..block5 of the encoder, then everything new (bottleneck, decoder, 1x1 conv) as
        `head`."""
        stages: Stages = {f"block{i}": block for i, block in enumerate(self.net.encoder.blocks(), 1)}
        stages[HEAD] = [self.net.decoder, self.net.segmentation_head]
        return stages

    def cache_blocker(self):
        return "the U-Net's decoder reads the encoder at five resolutions, not one cached tensor"

    def map_pretrained(self, state):
        """A transferlab U-Net (state_dict or checkpoint) loads all but the 1x1 head, whose class
        count may differ; a torchvision vgg16_bn state_dict loads the encoder only
        (`features.<i>` is `encoder.features.<i>`, same indices)."""
        if any(k.startswith("encoder.") for k in state):
            return state, ("segmentation_head",)
        mapped = {
            f"encoder.{k}" if k.startswith("features.") else k: v
            for k, v in state.items()
            if not k.startswith("classifier.")
        }
        return mapped, ("decoder", "segmentation_head")


def main(argv: list[str] | None = None) -> int:
    """`transferlab-backbones [PATTERN]`: the networks `backbone.name=` takes."""
    import argparse
    import fnmatch

    parser = argparse.ArgumentParser(
        prog="transferlab-backbones",
        description="List the backbones transferlab trains: every torchvision classifier "
        "(backbone=torchvision or a named group such as backbone=resnet18, then backbone.name=NAME) "
        "and, with timm installed, every timm model (backbone=timm backbone.name=NAME).",
    )
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'convnext*'")
    parser.add_argument("--pretrained", action="store_true", help="timm: only models with pretrained weights")
    args = parser.parse_args(argv)
    found = fnmatch.filter(torchvision_models(), args.pattern)
    print(f"torchvision ({len(found)}): {' '.join(found) or '-'}")
    try:
        timm = import_timm()
    except ConfigError as err:
        print(f"timm: not installed ({err})")
        return 0
    found = timm.list_models(args.pattern, pretrained=args.pretrained)
    print(f"timm ({len(found)}): {' '.join(found) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
