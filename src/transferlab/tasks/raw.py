"""The eval transforms as torch modules on raw images: what an exported model with
`preprocess=inside` runs before the network. Input: uint8 RGB images, NHWC (batch, height, width,
3), one size per batch, any size; the same steps as the PIL eval transform, in tensor ops an
exporter can trace with symbolic height and width (no branch on the orientation)."""

import torch
import torch.nn.functional as F
from torch import nn


def round_half_even(k):
    """round(k / 2) with halves to the even neighbour (Python's round, torchvision's crop offset),
    in integer arithmetic on a possibly symbolic int k >= 0."""
    return k // 2 + (k % 2) * ((k // 2) % 2)


def centre_crop_geometry(height, width, shorter: int, size: int, short=None):
    """Where the eval transform's crop lies: (resized height, resized width, top, left) for an
    image of `height` x `width` whose shorter side (`short`, by default min of the two) becomes
    `shorter`, the longer floor(shorter * longer / short), then cropped to `size` x `size`.
    Integer arithmetic, so it holds for plain and symbolic (exported) sizes alike."""
    short = min(height, width) if short is None else short
    new_h, new_w = (shorter * height) // short, (shorter * width) // short
    return new_h, new_w, round_half_even(new_h - size), round_half_even(new_w - size)


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x / 255.0 - self.mean) / self.std


class ShorterSideThenCentre(nn.Module):
    """Resize so the shorter side is `shorter` (the longer floor(shorter * longer / shorter_in)),
    bilinear with antialiasing, crop the central `size` x `size`, normalise."""

    def __init__(self, shorter: int, size: int, mean, std):
        super().__init__()
        self.shorter, self.size = shorter, size
        self.normalize = Normalize(mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        height, width = x.shape[2], x.shape[3]
        new_h, new_w, top, left = centre_crop_geometry(height, width, self.shorter, self.size,
                                                       torch.sym_min(height, width))
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        return self.normalize(x[:, :, top:top + self.size, left:left + self.size])


class Squash(nn.Module):
    """Resize the whole image to `size` x `size`, bilinear with antialiasing, normalise."""

    def __init__(self, size: int, mean, std):
        super().__init__()
        self.size = size
        self.normalize = Normalize(mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                          align_corners=False)
        return self.normalize(x)
