"""The backbone protocol: a `Backbone` builds its network and answers what the rest of
transferlab asks about it.

- `stages()`: ordered stages from input to head, the unit of every freeze strategy. A stage is a
  list of modules (whose train/eval mode follows the stage) and loose parameters (ViT's class
  token, which belongs to no module of its own); the last stage is always `head`;
- `head_path`: the module that replaced the original classifier and starts fresh;
- `weights_normalization` / `pretrained_state` / `map_pretrained`: where pretrained weights come
  from, the mean/std they were trained with, and how their names map onto this network's;
- `check_image_size`: whether the network takes images of a side, before training.
"""

import os
from collections.abc import Iterable
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import torch
from torch import nn

from transferlab.errors import ConfigError
from transferlab.normalization import Normalization

HEAD = "head"

StageItem = nn.Module | nn.Parameter
Stages = dict[str, list[StageItem]]
StateDict = dict[str, torch.Tensor]


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


def check_covers(net: nn.Module, stages: Stages) -> None:
    staged = {id(p) for items in stages.values() for p in stage_parameters(items)}
    loose = [n for n, p in net.named_parameters() if id(p) not in staged]
    if loose:
        raise ConfigError(
            f"no stage map for {type(net).__name__}: parameters {loose[:5]} belong to no stage, "
            "so freeze strategies cannot handle them"
        )


class Backbone:
    """A network and what transferlab needs to know to fine-tune it (see the module docstring)."""

    name: str
    net: nn.Module
    head_path: str
    dense = False  # per-pixel outputs at the input's height and width (else one per image)
    pads_to: int | None = None  # a dense network pads height and width to multiples of this

    def stages(self) -> Stages:
        raise NotImplementedError

    @property
    def head(self) -> nn.Module:
        return self.net.get_submodule(self.head_path)

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


def load_state_dict_file(path: str | os.PathLike) -> StateDict:
    """A state_dict from a `.pth` / `.pt` / `.safetensors` file or a transferlab (Lightning)
    checkpoint, loaded with `weights_only=True`: plain tensors, never pickled code."""
    return load_weights_file(path)[0]


def load_weights_file(path: str | os.PathLike) -> tuple[StateDict, dict | None]:
    """A weights file's network tensors and, for a transferlab checkpoint, its hyperparameters
    (what the run was: backbone, classes, preprocessing); None for a plain state_dict."""
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
    hparams = None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        # A Lightning checkpoint: the network's tensors sit under the module's `net.` prefix.
        hparams = state.get("hyper_parameters")
        state = {k.removeprefix("net."): v for k, v in state["state_dict"].items()}
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path} holds a {type(state).__name__}, not a state_dict")
    return state, hparams
