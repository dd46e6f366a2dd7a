"""The `scheduler` group's schedules that torch has only in parts: cosine with a linear warmup, and
one cycle with each param group's own peak. Both start from the param groups' LRs as
`transferlab.modules.base` set them (the stage ratios included), so the ratios hold throughout."""

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, OneCycleLR, SequentialLR

from transferlab.errors import ConfigError


def cosine(optimizer: Optimizer, T_max: int, warmup_epochs: int = 0, eta_min: float = 0.0,
           warmup_start: float = 0.01) -> LRScheduler:
    """Cosine annealing to `eta_min` at epoch `T_max`, after `warmup_epochs` of a linear ramp from
    `warmup_start` x each group's LR (torch's LinearLR, then CosineAnnealingLR). Stepped per epoch."""
    if not 0 <= warmup_epochs < max(T_max, 1):
        raise ConfigError(f"scheduler.warmup_epochs={warmup_epochs} must be in [0, T_max={T_max})")
    if warmup_epochs == 0:
        return CosineAnnealingLR(optimizer, T_max=T_max, eta_min=eta_min)
    warmup = LinearLR(optimizer, start_factor=warmup_start, total_iters=warmup_epochs)
    decay = CosineAnnealingLR(optimizer, T_max=T_max - warmup_epochs, eta_min=eta_min)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_epochs])


def one_cycle(optimizer: Optimizer, total_steps: int, pct_start: float = 0.3,
              div_factor: float = 25.0, final_div_factor: float = 1e4) -> LRScheduler:
    """torch's OneCycleLR with each param group's LR as its peak (so a stage at 0.1 x the head's
    LR peaks at 0.1 x the head's peak), over the fit's `total_steps` optimizer steps; stepped per
    batch. The module passes `total_steps` (Lightning's estimate for the fit)."""
    peaks = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(optimizer, max_lr=peaks, total_steps=total_steps, pct_start=pct_start,
                      div_factor=div_factor, final_div_factor=final_div_factor)
