"""U-Net with a VGG16-bn encoder, split like segmentation_models_pytorch: encoder, decoder, head.

Parameter names: torchvision `vgg16_bn`'s `features.<i>.*` is this net's `encoder.features.<i>.*`
(same indices; its `classifier.*` has no counterpart here). `UNetBackbone` in
`transferlab.models.backbones` does that mapping and names the stages.
"""

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers
from torchvision.ops import Conv2dNormActivation

from transferlab.errors import ConfigError

log = logging.getLogger(__name__)

ENCODERS = ("vgg16_bn",)


class VGGEncoder(nn.Module):
    """`vgg16_bn().features` (as torchvision builds it) without its last max-pool, which would
    leave 1/32 resolution. Returns the output of each of its five conv blocks."""

    out_channels = (64, 128, 256, 512, 512)  # at 1, 1/2, 1/4, 1/8, 1/16 of the input side
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
    """Upsample x2, concatenate the encoder's skip of that resolution, two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = nn.Sequential(
            Conv2dNormActivation(out_channels + skip_channels, out_channels, kernel_size=3),
            Conv2dNormActivation(out_channels, out_channels, kernel_size=3),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNetDecoder(nn.Module):
    def __init__(self, encoder_channels: tuple[int, ...], bottleneck_channels: int = 1024):
        super().__init__()
        *skip_channels, deepest = encoder_channels
        self.bottleneck = Conv2dNormActivation(deepest, bottleneck_channels, kernel_size=1)
        blocks, in_channels = [], bottleneck_channels
        for skip in reversed(skip_channels):
            blocks.append(DecoderBlock(in_channels, skip, skip))
            in_channels = skip
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = in_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        *skips, x = features
        x = self.bottleneck(x)
        for block, skip in zip(self.blocks, reversed(skips)):
            x = block(x, skip)
        return x


class UNet(nn.Module):
    """Logits (N, num_classes, H, W) for images (N, 3, H, W) of any size: sides that are not
    multiples of 16 are zero-padded on the bottom/right and the logits cropped back."""

    def __init__(self, num_classes: int, name: str = "vgg16_bn"):
        super().__init__()
        if name not in ENCODERS:
            raise ConfigError(f"U-Net encoder {name!r} is not available; choose one of {ENCODERS}")
        self.encoder = VGGEncoder()
        self.decoder = UNetDecoder(self.encoder.out_channels)
        self.segmentation_head = nn.Conv2d(self.decoder.out_channels, num_classes, kernel_size=1)
        log.info(
            "U-Net (%s encoder, %d output channels): %s parameters, %s in the encoder",
            name, num_classes, f"{count(self):,}", f"{count(self.encoder):,}",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        step = self.encoder.reduction
        x = F.pad(x, (0, -width % step, 0, -height % step))
        logits = self.segmentation_head(self.decoder(self.encoder(x)))
        return logits[..., :height, :width]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
