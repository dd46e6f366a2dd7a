"""The `augment` group: what training images go through, as torchvision `transforms.v2` builds it.

Each option is a policy with the two lists of ops a task needs, before the tensor steps every
transform shares (to float, normalise):
- `classification(size)`: ops on the image;
- `segmentation(size)`: ops on an (image, `tv_tensors.Mask`) pair: the geometric ones move image
  and mask together (masks resampled nearest), the photometric ones touch the image only.

`basic` is the tutorial's random resized crop and flip (segmentation: a milder crop, a small
rotation and brightness/contrast jitter). `trivialaugment`, `randaugment`, `autoaugment` add
torchvision's policy after them; v2's policies do not take masks, so for segmentation they run on
the image alone, with their geometric ops (shear, translate, rotate) left out: those would move
the image off its mask. `data.augment=false` (or `augment=none`) gives the training images the
val transform.
"""

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from transferlab.errors import ConfigError

GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


class Basic:
    """Random resized crop (`scale`, `ratio`) and horizontal flip; for segmentation also
    `rotation` degrees and `jitter` of brightness and contrast, on the image only. None: the
    task's default."""

    augments = True

    def __init__(self, scale: list[float] | None = None, ratio: list[float] | None = None,
                 flip: bool = True, rotation: float = 10.0, jitter: float = 0.2):
        self.scale, self.ratio, self.flip = scale, ratio, flip
        self.rotation, self.jitter = rotation, jitter

    def classification(self, size: int) -> list:
        crop = v2.RandomResizedCrop(size, scale=tuple(self.scale or (0.08, 1.0)),
                                    ratio=tuple(self.ratio or (3 / 4, 4 / 3)), antialias=True)
        return [crop, *([v2.RandomHorizontalFlip()] if self.flip else []), *self.policy(masks=False)]

    def segmentation(self, size: int) -> list:
        crop = v2.RandomResizedCrop(size, scale=tuple(self.scale or (0.5, 1.0)),
                                    ratio=tuple(self.ratio or (0.8, 1.25)), antialias=True)
        ops = [crop, *([v2.RandomHorizontalFlip()] if self.flip else [])]
        if self.rotation:
            ops.append(v2.RandomRotation(self.rotation))  # corners of the mask filled with class 0
        if self.jitter:
            ops.append(v2.ColorJitter(brightness=self.jitter, contrast=self.jitter))
        return ops + self.policy(masks=True)

    def policy(self, masks: bool) -> list:
        """The automatic policy after the basic ops (none here)."""
        return []


def photometric(policy: type[v2.Transform]) -> type[v2.Transform]:
    """`policy` without its geometric ops: a subclass with a smaller op table (torchvision's
    policies draw their ops from the class's `_AUGMENTATION_SPACE`, as its own subclasses set it)."""
    space = {k: v for k, v in policy._AUGMENTATION_SPACE.items() if k not in GEOMETRIC}
    return type(f"Photometric{policy.__name__}", (policy,), {"_AUGMENTATION_SPACE": space})


class TrivialAugment(Basic):
    """TrivialAugmentWide (Müller and Hutter 2021): one random op at a random magnitude."""

    def policy(self, masks):
        make = photometric(v2.TrivialAugmentWide) if masks else v2.TrivialAugmentWide
        return [ImageOnly(make())] if masks else [make()]


class RandAugment(Basic):
    """RandAugment (Cubuk et al. 2020): `num_ops` random ops at `magnitude` (0-30)."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, **basic):
        super().__init__(**basic)
        self.num_ops, self.magnitude = num_ops, magnitude

    def policy(self, masks):
        make = photometric(v2.RandAugment) if masks else v2.RandAugment
        op = make(num_ops=self.num_ops, magnitude=self.magnitude)
        return [ImageOnly(op)] if masks else [op]


class AutoAugment(Basic):
    """AutoAugment's learned ImageNet policy (Cubuk et al. 2019); classification only: its
    sub-policies pair geometric and photometric ops, which cannot be split."""

    def policy(self, masks):
        if masks:
            raise ConfigError("augment=autoaugment is for classification: its sub-policies pair "
                              "geometric with photometric ops, which would move the image off its "
                              "mask; use augment=trivialaugment or randaugment for segmentation")
        return [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]


class NoAugment(Basic):
    """Training images get the val transform (as `data.augment=false`)."""

    augments = False


class ImageOnly(v2.Transform):
    """Runs `transform` on the image and passes every other input (the mask) through."""

    def __init__(self, transform: v2.Transform):
        super().__init__()
        self.op = transform

    def forward(self, *inputs):
        images = [i for i in inputs if isinstance(i, (tv_tensors.Image, torch.Tensor))
                  and not isinstance(i, tv_tensors.Mask)]
        changed = {id(images[0]): self.op(images[0])} if images else {}
        out = tuple(changed.get(id(i), i) for i in inputs)
        return out if len(out) > 1 else out[0]
