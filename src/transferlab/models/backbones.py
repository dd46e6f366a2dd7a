"""torchvision classifiers by name, with the last Linear replaced by a fresh head."""

import difflib

import torchvision
from torch import nn

from transferlab.errors import ConfigError


def classification_models() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def head_name(net: nn.Module) -> str:
    """Qualified name of the last Linear layer: the classifier head of every torchvision model."""
    names = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ConfigError(f"{type(net).__name__} has no Linear layer to replace with a new head")
    return names[-1]


# Nets whose training-mode output is not one logits tensor: refused by name, not half-supported.
AUXILIARY_OUTPUTS = ("googlenet", "inception_v3")


def build_classifier(name: str, num_classes: int) -> nn.Module:
    """Architecture only (torchvision's own random init); `init` decides the weights."""
    if name in AUXILIARY_OUTPUTS:
        raise ConfigError(
            f"backbone {name!r} is not supported yet: in training it returns its auxiliary "
            "classifiers' outputs beside the logits, and those heads would need replacing too"
        )
    known = classification_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown backbone {name!r}: not a torchvision classification model{hint} "
            "(torchvision.models.list_models(module=torchvision.models) lists them all)"
        )
    net = torchvision.models.get_model(name, weights=None)
    replace_head(net, num_classes)
    return net


def replace_head(net: nn.Module, num_classes: int) -> None:
    name = head_name(net)
    old = net.get_submodule(name)
    net.set_submodule(name, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
