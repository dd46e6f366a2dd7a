import pytest

from tests.support.freezing import STRATEGIES, fit_and_check_frozen, no_stochastic_depth
from tests.support.modules import classifier_module, random_loader
from transferlab.errors import ConfigError
from transferlab.freeze import (
    FeatureExtraction,
    FullFineTune,
    GradualUnfreezing,
    PartialFineTune,
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
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_frozen_means_frozen(family, strategy, seeded):
    size, backbone_args = FAMILIES[family]
    module = classifier_module(family, STRATEGIES[strategy][0], backbone_args=backbone_args)
    no_stochastic_depth(module.net)
    fit_and_check_frozen(module, random_loader(n=2, size=size, batch_size=2), strategy)


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
