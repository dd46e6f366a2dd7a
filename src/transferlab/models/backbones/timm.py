"""`backbone=timm`: any timm model by name. The head comes from timm's own `reset_classifier`,
the stages from the model's `group_matcher(coarse=True)`, the normalisation from its pretrained
config: what differs between timm models, each model answers itself."""

import difflib

from torch import nn

from transferlab.errors import ConfigError
from transferlab.models.backbones.base import HEAD, Backbone, Stages, check_covers


def import_timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("backbone=timm needs the timm package: pip install 'transferlab[timm]'") from None
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


def stage_name(index: int, params: list[str], taken: set[str]) -> str:
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


def timm_tag(name: str, weights: str) -> str:
    """timm names weights `model.tag`; DEFAULT is the model's default tag."""
    return name if weights == "DEFAULT" or "." in name else f"{name}.{weights}"


def timm_pretrained(tag: str, **kwargs) -> nn.Module:
    """timm's model `tag` with its pretrained weights (from the Hugging Face cache or downloaded);
    `kwargs` go to `timm.create_model` (`features_only=True` for a U-Net encoder)."""
    timm = import_timm()
    try:
        return timm.create_model(tag, pretrained=True, **kwargs)
    except Exception as err:  # offline: huggingface_hub and urllib raise several types
        raise ConfigError(
            f"timm weights {tag} are not cached and could not be downloaded "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Pass init.weights_path=/path/to/state_dict (a timm .pth/.safetensors state_dict or "
            "a transferlab checkpoint), or train without them: init=he or init=default."
        ) from err


class TimmBackbone(Backbone):
    """Any `timm` model by name (see the module docstring); extra arguments go to
    `timm.create_model`, e.g. `+backbone.drop_path_rate=0.1`."""

    def __init__(self, name: str, num_classes: int, **kwargs):
        timm = import_timm()
        if not timm.is_model(name.split(".")[0]):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown timm model {name!r}{hint} (transferlab-backbones 'pattern*' lists them)"
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
            name = stage_name(index, params, set(order))
            order.append(name)
            group_of |= dict.fromkeys(params, name)
        group_of |= dict.fromkeys(head_params, HEAD)
        stages = stages_from_groups(self.net, group_of, [*order, HEAD])
        check_covers(self.net, stages)
        return stages

    @classmethod
    def weights_normalization(cls, name, weights):
        timm = import_timm()
        cfg = timm.models.get_pretrained_cfg(timm_tag(name, weights))
        if cfg is None:
            raise ConfigError(f"timm has no pretrained weights {timm_tag(name, weights)!r}")
        return tuple(cfg.mean), tuple(cfg.std)

    def pretrained_state(self, weights):
        tag = timm_tag(self.name, weights)
        return timm_pretrained(tag).state_dict(), f"timm {tag}"

    def size_hint(self):
        return (". timm models built for one size take +backbone.img_size=N "
                "(or +backbone.dynamic_img_size=true)")
