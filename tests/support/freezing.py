"""The frozen-means-frozen check every network family goes through (tests/test_freeze.py for the
classifiers, tests/models/test_segmentation_backbones.py for the segmentation networks): the
strategies to run, and a fit that asserts what froze stayed put and what trained moved."""

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from tests.support.modules import STRATEGY, quiet_trainer
from transferlab.freeze import is_frozen

GRADUAL = {"_target_": STRATEGY + "GradualUnfreezing", "head_epochs": 1, "unfreeze_every": 1}
# strategy -> (its config, the stages below the head still frozen at the end of the fit)
STRATEGIES = {
    "feature_extraction": ({"_target_": STRATEGY + "FeatureExtraction"}, lambda body: body),
    "full": ({"_target_": STRATEGY + "FullFineTune", "backbone_lr_mult": 0.1}, lambda body: []),
    "partial": ({"_target_": STRATEGY + "PartialFineTune", "frozen_stages": 2}, lambda body: body[:2]),
    # 3 epochs: head only, then the top stage, then the next one.
    "gradual": (GRADUAL, lambda body: body[:-2]),
}


def tensors(item: nn.Module | nn.Parameter, named_parameters=False):
    if isinstance(item, nn.Parameter):  # a loose one, such as ViT's class token
        return [("", item)]
    return item.named_parameters() if named_parameters else item.state_dict().items()


def state(items) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": t.detach().clone() for i, item in enumerate(items) for k, t in tensors(item)}


def param_keys(items) -> list[str]:
    return [f"{i}.{k}" for i, item in enumerate(items) for k, _ in tensors(item, True)]


def no_stochastic_depth(net: nn.Module) -> None:
    """Row-mode stochastic depth (ConvNeXt, EfficientNet) skips a residual branch per image. On a
    2-image batch ConvNeXt's last block (p=0.1) skips both images in 1% of steps; its
    zero-initialised biases then get an exactly zero gradient and rightly stay put, which is the
    regulariser at work, not a freezing bug. p=0 makes it the identity (modes still count)."""
    for m in net.modules():
        if isinstance(m, StochasticDepth):
            m.p = 0.0
        if type(m).__name__ == "DropPath":  # timm's
            m.drop_prob = 0.0


def fit_and_check_frozen(module, loader, strategy: str) -> None:
    """Fit `module` (built with STRATEGIES[strategy]) and check every stage: a frozen one kept its
    weights and BatchNorm statistics and ran in inference mode throughout; a trainable one moved
    every parameter and ran in training mode. float32 is exact enough: weight decay moves every
    nonzero weight by lr*wd >= 2.5e-7 of its value (half a float32 ulp is <= 6e-8 of it) and any
    nonzero gradient moves a zero bias."""
    names = list(module.stages)
    frozen_at_end = set(STRATEGIES[strategy][1](names[:-1]))
    before = {n: state(mods) for n, mods in module.stages.items()}
    # Which mode each stage's layers ran in during training steps (Dropout and BN care).
    modes: dict[str, set[bool]] = {n: set() for n in names}
    for name, mods in module.stages.items():
        for sub in (s for m in mods if isinstance(m, nn.Module) for s in m.modules()):
            sub.register_forward_pre_hook(lambda mod, args, n=name: modes[n].add(mod.training))

    epochs = 3 if strategy == "gradual" else 2
    quiet_trainer(max_epochs=epochs, limit_val_batches=0).fit(module, loader)

    for name, mods in module.stages.items():
        after = state(mods)
        if name in frozen_at_end:
            assert is_frozen(mods)
            moved = [k for k in after if not torch.equal(before[name][k], after[k])]
            assert not moved, f"frozen {name}: {moved} changed (weights or BN statistics)"
            assert modes[name] == {False}, f"frozen {name} ran in training mode"
        else:
            still = [k for k in param_keys(mods) if torch.equal(before[name][k], after[k])]
            assert not still, f"trainable {name}: {still} did not change"
            assert True in modes[name]
