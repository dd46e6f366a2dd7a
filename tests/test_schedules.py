"""The schedules keep every param group's ratio to the head, warm up as asked, and one cycle
learns the fit's step count from the module."""

import pytest
import torch

from tests.support.modules import STRATEGY, classifier_module, quiet_trainer, random_loader
from transferlab.errors import ConfigError
from transferlab.schedules import cosine, one_cycle


def optimizer(*lrs):
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def lrs_over(scheduler, steps):
    seen = []
    for _ in range(steps):
        seen.append([g["lr"] for g in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("warmup,ramp", [(0, []), (2, [0.01, 0.505])])  # from 1 % of the LR, linear
def test_cosine_warms_up_linearly_then_anneals_keeping_the_ratios(warmup, ramp):
    sched = cosine(optimizer(1.0, 0.1), T_max=4 + warmup, warmup_epochs=warmup)
    seen = lrs_over(sched, 4 + warmup)
    for head, stage in seen:
        assert stage == pytest.approx(head * 0.1)
    heads = [h for h, _ in seen]
    assert heads[:warmup] == pytest.approx(ramp)
    assert heads[warmup] == pytest.approx(1.0) and heads[-1] < 0.2
    assert all(a >= b for a, b in zip(heads[warmup:], heads[warmup + 1:]))


def test_a_warmup_as_long_as_the_fit_is_refused():
    with pytest.raises(ConfigError, match="scheduler.warmup_epochs=5 must be in"):
        cosine(optimizer(1.0), T_max=5, warmup_epochs=5)


def test_one_cycle_peaks_at_each_groups_own_lr():
    sched = one_cycle(optimizer(1.0, 0.1), total_steps=10, pct_start=0.3)
    seen = lrs_over(sched, 10)
    peak = max(range(10), key=lambda i: seen[i][0])
    assert seen[peak][0] == pytest.approx(1.0) and seen[peak][1] == pytest.approx(0.1)
    assert seen[0][0] == pytest.approx(1.0 / 25) and all(s == pytest.approx(h * 0.1) for h, s in seen)


def test_the_module_gives_one_cycle_the_fits_step_count():
    module = classifier_module("resnet18", {"_target_": STRATEGY + "FullFineTune"}, lr=0.1,
                               scheduler={"_target_": "transferlab.schedules.one_cycle", "interval": "step"})
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0)
    trainer.fit(module, random_loader(n=8, size=32, batch_size=4))
    sched = trainer.lr_scheduler_configs[0]
    assert sched.interval == "step" and sched.scheduler.total_steps == 4
