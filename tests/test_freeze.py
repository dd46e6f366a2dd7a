import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from tests.support.modules import STRATEGY, classifier_module, quiet_trainer, random_loader
from transferlab.errors import ConfigError
from transferlab.freeze import (
    FeatureExtraction,
    FullFineTune,
    GradualUnfreezing,
    PartialFineTune,
    is_frozen,
)

# One member of every torchvision family (the smallest), at a small image size that still leaves
# more than 1x1 pixels for the last BatchNorm: on 2 images of 1x1, BatchNorm on batch statistics
# can give a bias an exactly zero gradient, and the test would flag a trainable bias as frozen.
FAMILIES = {
    "resnet18": (64, {}), "vgg11_bn": (64, {}), "alexnet": (64, {}),
    "mobilenet_v3_small": (64, {}), "efficientnet_b0": (64, {}), "densenet121": (64, {}),
    "convnext_tiny": (64, {}), "regnet_y_400mf": (64, {}), "shufflenet_v2_x0_5": (64, {}),
    "mnasnet0_5": (64, {}), "swin_t": (32, {}), "squeezenet1_1": (64, {}),
    "googlenet": (64, {}), "inception_v3": (128, {}),
    "vit_b_16": (32, {"image_size": 32}), "maxvit_t": (224, {}),  # MaxViT: 224 only
    # timm: stages from each model's group_matcher, head from reset_classifier
    # (timm zero-initialises each residual block's last BN scale, which gives the block's other
    # parameters an exactly zero gradient in the one step the gradual case trains them.)
    "timm/resnet18": (64, {"zero_init_last": False}), "timm/convnext_atto": (64, {}),
    "timm/efficientnet_b0": (64, {}), "timm/regnetx_002": (64, {"zero_init_last": False}), "timm/vit_tiny_patch16_224": (32, {"img_size": 32}),
    "timm/deit_tiny_patch16_224": (32, {"img_size": 32}),
}
GRADUAL = {"_target_": STRATEGY + "GradualUnfreezing", "head_epochs": 1, "unfreeze_every": 1}
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


@pytest.fixture
def seeded():
    """torch's global RNG seeded for this test only: the same weights and random draws whatever
    ran before, and the tests after it see the RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_frozen_means_frozen(family, strategy, seeded):
    freeze, expect_frozen = STRATEGIES[strategy]
    size, backbone_args = FAMILIES[family]
    module = classifier_module(family, freeze, backbone_args=backbone_args)
    # Row-mode stochastic depth (ConvNeXt, EfficientNet) skips a residual branch per image. On
    # this 2-image batch ConvNeXt's last block (p=0.1) skips both images in 1% of steps; its
    # zero-initialised biases then get an exactly zero gradient and rightly stay put, which is
    # the regulariser at work, not a freezing bug. p=0 makes it the identity (modes still count).
    # float32 is exact enough: weight decay moves every nonzero weight by lr*wd >= 2.5e-7 of its
    # value (half a float32 ulp is <= 6e-8 of it) and any nonzero gradient moves a zero bias.
    for m in module.net.modules():
        if isinstance(m, StochasticDepth):
            m.p = 0.0
        if type(m).__name__ == "DropPath":  # timm's
            m.drop_prob = 0.0
    names = list(module.stages)
    frozen_at_end = set(expect_frozen(names[:-1]))
    before = {n: state(mods) for n, mods in module.stages.items()}

    # Which mode each stage's layers ran in during training steps (Dropout and BN care).
    modes: dict[str, set[bool]] = {n: set() for n in names}
    for name, mods in module.stages.items():
        for sub in (s for m in mods if isinstance(m, nn.Module) for s in m.modules()):
            sub.register_forward_pre_hook(lambda mod, args, n=name: modes[n].add(mod.training))

    epochs = 3 if strategy == "gradual" else 2
    loader = random_loader(n=2, size=size, batch_size=2)
    quiet_trainer(max_epochs=epochs, limit_val_batches=0).fit(module, loader)

    for name, mods in module.stages.items():
        after = state(mods)
        if name in frozen_at_end:
            assert is_frozen(mods)
            moved = [k for k in after if not torch.equal(before[name][k], after[k])]
            assert not moved, f"frozen {name}: {moved} changed (weights or BN statistics)"
            assert modes[name] == {False}, f"frozen {name} ran in training mode"
        else:
            keys = param_keys(mods)
            still = [k for k in keys if torch.equal(before[name][k], after[k])]
            assert not still, f"trainable {name}: {still} did not change"
            assert True in modes[name]


# The schedules on stage names alone: no network, no Trainer.
NAMES = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


@pytest.mark.parametrize("strategy,epoch,frozen", [
    (FeatureExtraction(), 0, {"stem", "layer1", "layer2", "layer3", "layer4"}),
    (FeatureExtraction(), 30, {"stem", "layer1", "layer2", "layer3", "layer4"}),
    (FullFineTune(), 0, set()),
    (PartialFineTune(frozen_stages=3), 9, {"stem", "layer1", "layer2"}),
    (PartialFineTune(frozen_stages=["layer1", "stem"]), 0, {"stem", "layer1"}),
    (PartialFineTune(frozen_stages=0), 0, set()),
    # negative: all stages below the head but the last k (the default, -1: layer4 and the head train)
    (PartialFineTune(), 0, {"stem", "layer1", "layer2", "layer3"}),
    (PartialFineTune(frozen_stages=-2), 0, {"stem", "layer1", "layer2"}),
    (PartialFineTune(frozen_stages=-5), 0, set()),
    # head only for 3 epochs, then one more stage top-down every 2 epochs
    (GradualUnfreezing(head_epochs=3, unfreeze_every=2), 2,
     {"stem", "layer1", "layer2", "layer3", "layer4"}),
    (GradualUnfreezing(head_epochs=3, unfreeze_every=2), 3, {"stem", "layer1", "layer2", "layer3"}),
    (GradualUnfreezing(head_epochs=3, unfreeze_every=2), 4, {"stem", "layer1", "layer2", "layer3"}),
    (GradualUnfreezing(head_epochs=3, unfreeze_every=2), 5, {"stem", "layer1", "layer2"}),
    (GradualUnfreezing(head_epochs=3, unfreeze_every=2), 11, set()),
    (GradualUnfreezing(head_epochs=0, unfreeze_every=1), 0, {"stem", "layer1", "layer2", "layer3"}),
], ids=lambda v: type(v).__name__ if not isinstance(v, (int, set)) else str(sorted(v) if isinstance(v, set) else v))
def test_frozen_set_per_epoch(strategy, epoch, frozen):
    assert strategy.frozen_stages(NAMES, epoch) == frozen


@pytest.mark.parametrize("strategy,mults", [
    (FullFineTune(), [1, 1, 1, 1, 1, 1]),
    (FullFineTune(backbone_lr_mult=0.1), [0.1, 0.1, 0.1, 0.1, 0.1, 1]),
    (PartialFineTune(frozen_stages=2, backbone_lr_mult=0.5), [0.5, 0.5, 0.5, 0.5, 0.5, 1]),
    # right below the head at backbone_lr_mult, each deeper stage a further stage_lr_decay
    (GradualUnfreezing(backbone_lr_mult=0.1, stage_lr_decay=0.5),
     [0.1 * 0.5**4, 0.1 * 0.5**3, 0.1 * 0.5**2, 0.1 * 0.5, 0.1, 1]),
], ids=lambda v: type(v).__name__ if not isinstance(v, list) else "")
def test_lr_multiplier_per_stage(strategy, mults):
    assert list(strategy.lr_multipliers(NAMES).values()) == pytest.approx(mults)
    assert list(strategy.lr_multipliers(NAMES)) == NAMES


@pytest.mark.parametrize("strategy,message", [
    (PartialFineTune(frozen_stages=6), "has 5 stages below the head"),
    (PartialFineTune(frozen_stages=-6), r"use -5\.\.5"),
    (PartialFineTune(frozen_stages=["layer9"]), r"unknown stage\(s\) \['layer9'\]"),
    (PartialFineTune(frozen_stages=["head"]), "freezes the head"),
])
def test_impossible_settings_are_refused_before_training(strategy, message):
    with pytest.raises(ConfigError, match=message):
        strategy.validate(NAMES)
