"""`backbone=unet_vgg16_bn`: the U-Net of `transferlab.models.unet` as a backbone."""

from transferlab.models.backbones.base import HEAD, Stages
from transferlab.models.backbones.torchvision import TorchvisionWeights


class UNetBackbone(TorchvisionWeights):
    """U-Net whose encoder is a torchvision classifier's conv layers (vgg16_bn): ImageNet weights
    for the encoder come from that classifier's weights, mapped onto `encoder.*`."""

    dense = True

    def __init__(self, num_classes: int, name: str = "vgg16_bn"):
        from transferlab.models.unet import UNet

        self.name = name
        self.net = UNet(num_classes, name)
        self.head_path = "segmentation_head"

    @property
    def pads_to(self) -> int:
        return self.net.encoder.reduction  # the U-Net pads to it and crops its output back

    def stages(self) -> Stages:
        """block1..block5 of the encoder, then everything new (bottleneck, decoder, 1x1 conv) as
        `head`."""
        stages: Stages = {f"block{i}": block for i, block in enumerate(self.net.encoder.blocks(), 1)}
        stages[HEAD] = [self.net.decoder, self.net.segmentation_head]
        return stages

    def map_pretrained(self, state):
        """A transferlab U-Net (state_dict or checkpoint) loads all but the 1x1 head, whose class
        count may differ; a torchvision vgg16_bn state_dict (or a transferlab vgg16_bn classifier's
        checkpoint) loads the encoder only (`features.<i>` is `encoder.features.<i>`, same
        indices)."""
        if any(k.startswith("encoder.") for k in state):
            return state, ("segmentation_head",)
        mapped = {
            f"encoder.{k}" if k.startswith("features.") else k: v
            for k, v in state.items()
            if not k.startswith("classifier.")
        }
        return mapped, ("decoder", "segmentation_head")
