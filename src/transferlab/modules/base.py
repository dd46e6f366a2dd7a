"""What every transferlab LightningModule shares: stages, param groups, freeze-aware train()."""

import lightning as L
from hydra.utils import instantiate

from transferlab.models.stages import Stages, stage_parameters
from transferlab.strategies import FreezeStrategy, is_frozen


class TransferModule(L.LightningModule):
    def __init__(self):
        super().__init__()

    @property
    def stages(self) -> Stages:
        """Ordered stages from input to head; recomputed so wrapped or converted layers are seen."""
        raise NotImplementedError

    def build_freeze_strategy(self, freeze: dict) -> FreezeStrategy:
        strategy = instantiate(freeze)
        strategy.validate(list(self.stages))
        return strategy

    def configure_callbacks(self):
        return [self.freeze_strategy]

    def train(self, mode: bool = True):
        # Lightning toggles train/eval around validation; frozen stages must stay in eval.
        super().train(mode)
        if mode:
            for modules in self.stages.values():
                if is_frozen(modules):
                    for m in modules:
                        m.eval()
        return self

    def configure_optimizers(self):
        stages = self.stages
        mults = self.freeze_strategy.lr_multipliers(list(stages))
        opt_cfg = dict(self.hparams.optimizer)
        base_lr = opt_cfg["lr"]
        groups = [
            {"params": stage_parameters(mods), "lr": base_lr * mults[name], "name": name}
            for name, mods in stages.items()
            if stage_parameters(mods)
        ]
        optimizer = instantiate(opt_cfg, _partial_=True)(groups)
        sched_cfg = self.hparams.get("scheduler")
        if not sched_cfg:
            return optimizer
        sched_cfg = dict(sched_cfg)
        interval = sched_cfg.pop("interval", "epoch")
        scheduler = instantiate(sched_cfg, _partial_=True)(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def parameter_counts(self) -> tuple[int, int]:
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def on_train_epoch_start(self) -> None:
        trainable, total = self.parameter_counts()
        self.log_dict({"params/trainable": float(trainable), "params/total": float(total)}, sync_dist=True)

    def stage_table(self) -> str:
        lrs = {}
        if self._trainer is not None and self.trainer.optimizers:
            lrs = {g.get("name"): g["lr"] for g in self.trainer.optimizers[0].param_groups}
        rows = [("stage", "params", "state", "lr")]
        for name, mods in self.stages.items():
            n = sum(p.numel() for p in stage_parameters(mods))
            state = "frozen" if is_frozen(mods) else "trainable"
            lr = f"{lrs[name]:.3g}" if name in lrs else "-"
            rows.append((name, f"{n:,}", state, lr))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
