"""U-Net on a feature pyramid, split like segmentation_models_pytorch: encoder, decoder, head.

The encoder is any module that returns its feature maps shallow to deep, one per resolution,
each at 1/2^k of the input side (`channels` and `reductions` say which). Without one, the seed's
encoder: torchvision `vgg16_bn`'s conv layers, `features.<i>.*` of that classifier being this
net's `encoder.features.<i>.*` (same indices; its `classifier.*` has no counterpart here).
`transferlab.models.backbones.UNetBackbone` builds the other encoders (any torchvision classifier
with a feature pyramid, timm's `features_only` models), maps weights and names the stages.
"""

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers
from torchvision.ops import Conv2dNormActivation

from transferlab.errors import ConfigError

log = logging.getLogger(__name__)

ENCODERS = ("vgg16_bn",)  # the encoders UNet builds itself; UNetBackbone brings any other
MAX_WIDTH = 512  # a decoder block is as wide as its skip, up to the seed's widest (VGG's 512)
MIN_WIDTH = 16  # decoder blocks without a skip halve the width, down to this


class VGGEncoder(nn.Module):
    """`vgg16_bn().features` (as torchvision builds it) without its last max-pool, which would
    leave 1/32 resolution. Returns the output of each of its five conv blocks."""

    out_channels = (64, 128, 256, 512, 512)
    reductions = (1, 2, 4, 8, 16)
    reduction = 16

    def __init__(self):
        super().__init__()
        # make_layers is what torchvision.models.vgg16_bn calls, minus the 100M-parameter classifier.
        self.features = make_layers(cfgs["D"], batch_norm=True)[:-1]

    def blocks(self) -> list[list[nn.Module]]:
        """The conv-BN-ReLU layers of each resolution; the max-pools between them hold no weights."""
        blocks: list[list[nn.Module]] = [[]]
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                blocks.append([])
            else:
                blocks[-1].append(layer)
        return blocks

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                outputs.append(x)
            x = layer(x)
        return [*outputs, x]


class DecoderBlock(nn.Module):
    """Upsample x2, concatenate the encoder's skip of that resolution (if it has one there), two
    3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = nn.Sequential(
            Conv2dNormActivation(out_channels + skip_channels, out_channels, kernel_size=3),
            Conv2dNormActivation(out_channels, out_channels, kernel_size=3),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        return self.conv(x if skip is None else torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """A 1x1 conv-BN-ReLU bottleneck on the deepest map, then one block per halving of the
    reduction down to the input's resolution. A block is as wide as the skip it concatenates
    (the seed's rule), at most MAX_WIDTH (ResNet-50's 1024-channel skip would otherwise make a
    28 M parameter block); where the encoder has no map (below ResNet's 1/2), it has no skip and
    halves the width."""

    def __init__(self, encoder_channels: tuple[int, ...], reductions: tuple[int, ...],
                 bottleneck_channels: int = 1024):
        super().__init__()
        *skip_channels, deepest = encoder_channels
        skip_at = {r: i for i, r in enumerate(reductions[:-1])}
        self.bottleneck = Conv2dNormActivation(deepest, bottleneck_channels, kernel_size=1)
        blocks, self.skips = [], []
        width, reduction = bottleneck_channels, reductions[-1]
        while reduction > 1:
            reduction //= 2
            skip = skip_at.get(reduction)
            out = min(skip_channels[skip], MAX_WIDTH) if skip is not None else max(width // 2, MIN_WIDTH)
            blocks.append(DecoderBlock(width, 0 if skip is None else skip_channels[skip], out))
            self.skips.append(skip)
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = width

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        *skips, x = features
        x = self.bottleneck(x)
        for block, skip in zip(self.blocks, self.skips):
            x = block(x, None if skip is None else skips[skip])
        return x


class UNet(nn.Module):
    """Logits (N, num_classes, H, W) for images (N, 3, H, W) of any size: sides that are not
    multiples of the deepest reduction are zero-padded on the bottom/right and the logits cropped
    back. `encoder` (with its `channels` and `reductions`, shallow to deep) replaces the seed's
    VGG16-bn encoder; `name` names it."""

    def __init__(self, num_classes: int, name: str = "vgg16_bn", encoder: nn.Module | None = None,
                 channels: tuple[int, ...] | None = None, reductions: tuple[int, ...] | None = None):
        super().__init__()
        if encoder is None:
            if name not in ENCODERS:
                raise ConfigError(f"U-Net encoder {name!r} is not built in; choose one of {ENCODERS} "
                                  "or build it with transferlab.models.backbones.UNetBackbone")
            encoder = VGGEncoder()
            channels, reductions = encoder.out_channels, encoder.reductions
        self.encoder = encoder
        self.reductions = tuple(reductions)
        self.decoder = UNetDecoder(tuple(channels), self.reductions)
        self.segmentation_head = nn.Conv2d(self.decoder.out_channels, num_classes, kernel_size=1)
        log.info(
            "U-Net (%s encoder, %d output channels): %s parameters, %s in the encoder",
            name, num_classes, f"{count(self):,}", f"{count(self.encoder):,}",
        )

    @property
    def reduction(self) -> int:
        return self.reductions[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        step = self.reduction
        x = F.pad(x, (0, -width % step, 0, -height % step))
        logits = self.segmentation_head(self.decoder(self.encoder(x)))
        return logits[..., :height, :width]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
