"""The `mixup` group: training batches mixed with torchvision's `transforms.v2.MixUp` / `CutMix`
(or, with `both`, `RandomChoice` of the two), which turn the labels into soft targets the
classification loss takes (`transferlab.modules.classification.soft_cross_entropy`, which keeps
the class weights' meaning). A batch is mixed with probability `prob`, after sampling (so with
`data.sampler=balanced` the mixed pairs are drawn from the balanced batches), on the device,
from the global random stream that EpochSeed reseeds every epoch (a resumed run mixes alike).
Classification only."""

from torchvision.transforms import v2

KINDS = ("mixup", "cutmix", "both")


class NoMixing:
    """Batches as they come (`mixup=none`)."""

    active = False
    name = "none"

    def transform(self, num_classes: int):
        return None


class Mixing(NoMixing):
    """`kind`: mixup | cutmix | both; `alpha`: the Beta(alpha, alpha) of the mixing weight;
    `prob`: the share of batches that are mixed."""

    active = True

    def __init__(self, kind: str = "mixup", alpha: float = 1.0, prob: float = 1.0):
        from transferlab.errors import ConfigError

        if kind not in KINDS or alpha <= 0 or not 0 < prob <= 1:
            raise ConfigError(f"mixup={kind} alpha={alpha} prob={prob}: kind is one of "
                              f"{', '.join(KINDS)}, alpha > 0, prob in (0, 1]")
        self.name, self.alpha, self.prob = kind, alpha, prob

    def transform(self, num_classes: int) -> v2.Transform:
        mixers = {"mixup": [v2.MixUp(alpha=self.alpha, num_classes=num_classes)],
                  "cutmix": [v2.CutMix(alpha=self.alpha, num_classes=num_classes)]}
        chosen = mixers.get(self.name) or [v2.RandomChoice(mixers["mixup"] + mixers["cutmix"])]
        return chosen[0] if self.prob == 1 else v2.RandomApply(chosen, p=self.prob)
