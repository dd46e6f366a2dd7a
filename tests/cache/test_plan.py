"""What a fit caches, as a table: `transferlab.cache.plan.plan` is a pure function of the stage
map, the freeze schedule and the epochs, so each row needs no network, data or Trainer."""

import pytest

from transferlab.cache.plan import plan
from transferlab.freeze import FeatureExtraction, FullFineTune, GradualUnfreezing, PartialFineTune

RESNET = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
# Forward GFLOP per image up to the end of each cut (the head's input: the whole body), about
# ResNet-18's at 224 px: deeper cuts cost more.
COST = {"stem": 0.24, "layer1": 0.5, "layer2": 0.9, "layer3": 1.4, "layer4": 1.8, "head": 1.82}
GRADUAL = GradualUnfreezing(head_epochs=3, unfreeze_every=2)


def cost(cut: str) -> float:
    return COST[cut] * 1e9


@pytest.mark.parametrize("strategy,start,end,options,cut,until", [
    (FeatureExtraction(), 0, 25, {}, "head", None),
    (FullFineTune(), 0, 25, {}, None, None),
    (PartialFineTune(frozen_stages=3), 0, 25, {}, "layer2", None),
    (PartialFineTune(), 0, 25, {}, "layer3", None),  # the default: all but the top stage frozen
    # a cut the network cannot run from (a skip connection across it): no cache
    (PartialFineTune(frozen_stages=3), 0, 25, {"cut_blocker": lambda cut: "skip"}, None, None),
    # gradual: head-only epochs on the cache, images from the first thaw
    (GRADUAL, 0, 25, {}, "head", 3),
    (GRADUAL, 0, -1, {}, "head", 3),  # no epoch limit: the schedule is read over a long horizon
    (GRADUAL, 0, 10, {"cost": cost}, "head", 3),  # the stem never thaws, but saves less
    (GRADUAL, 0, 5, {"cost": cost}, "layer3", None),  # only layer4 thaws: layer3's output wins
    (GRADUAL, 4, 25, {}, None, None),  # resumed after the first thaw: nothing stays frozen
    (GRADUAL, 0, 25, {"reload_every": 2}, None, None),  # the trainer's reloads miss epoch 3
    (GRADUAL, 0, 25, {"reload_every": 3}, "head", 3),  # ... or hit it
    # stateful layers in the head stage: the cache ends below them
    (FeatureExtraction(), 0, 25, {"head_blocker": "BN in the head stage"}, "layer4", None),
])
def test_the_cache_follows_the_freeze_schedule(strategy, start, end, options, cut, until):
    chosen = plan(RESNET, strategy.frozen_stages, start, end, **options)
    assert (chosen.cut, chosen.until) == (cut, until), chosen.why


def test_every_decision_says_why():
    off = plan(RESNET, FullFineTune().frozen_stages, 0, 25, strategy="FullFineTune")
    assert off.why == ("stem trains from epoch 0 under FullFineTune: no stage stays frozen for the "
                       "whole fit, so there is no fixed output to cache")
    missed = plan(RESNET, GRADUAL.frozen_stages, 0, 25, reload_every=2)
    assert "reload_dataloaders_every_n_epochs dividing 3" in " ".join(missed.notes)
    both = plan(RESNET, GRADUAL.frozen_stages, 0, 5, cost=cost)
    assert "GFLOP" in " ".join(both.notes) and "layer3" in both.why
