"""`backbone=unet` (`backbone.encoder=resnet34`, `timm:<name>`) and `backbone=unet_vgg16_bn`: the
U-Net of `transferlab.models.unet` on a feature pyramid (`transferlab.models.backbones.encoders`)."""

from transferlab.errors import ConfigError
from transferlab.models.backbones.base import HEAD, Stages, check_covers
from transferlab.models.backbones.encoders import (
    TIMM,
    Pyramid,
    build_pyramid,
    timm_names,
)
from transferlab.models.backbones.timm import TimmBackbone, timm_pretrained, timm_tag
from transferlab.models.backbones.torchvision import TorchvisionWeights

SEED_ENCODER = "vgg16_bn"  # the seed's encoder, built as it always was (UNet's own VGGEncoder)


def encoder_name(name: str | None, encoder: str | None) -> str:
    """`backbone.encoder` names the encoder; `backbone.name` (what `init` reads to find the
    weights' normalisation, and what older checkpoints record) must agree with it."""
    if name and encoder and name != encoder:
        raise ConfigError(f"backbone.name={name} but backbone.encoder={encoder}: set "
                          "backbone.encoder= alone (backbone.name follows it)")
    return encoder or name or SEED_ENCODER


class UNetBackbone(TorchvisionWeights):
    """U-Net whose encoder is a torchvision classifier's pyramid (ImageNet weights from that
    classifier's Weights) or a timm model's `features_only` net (weights from timm). Extra
    arguments go to the encoder's constructor (`+backbone.output_stride=16` for timm)."""

    dense = True

    def __init__(self, num_classes: int, name: str | None = None, encoder: str | None = None,
                 **kwargs):
        from transferlab.models.unet import UNet

        self.name = encoder_name(name, encoder)
        self.head_path = "segmentation_head"
        self.pyramid: Pyramid | None = None
        if self.name == SEED_ENCODER and not kwargs:
            self.net = UNet(num_classes, self.name)
        else:
            self.pyramid = build_pyramid(self.name, **kwargs)
            self.net = UNet(num_classes, self.name, self.pyramid.module, self.pyramid.channels,
                            self.pyramid.reductions)

    @property
    def pads_to(self) -> int:
        return self.net.reduction  # the U-Net pads to it and crops its output back

    def stages(self) -> Stages:
        """The encoder's stages (the seed's: block1..block5; a torchvision classifier's: its
        classification stages; timm: one per feature map), then everything new (bottleneck,
        decoder, 1x1 conv) as `head`."""
        encoder = self.net.encoder
        if self.pyramid is None:
            stages: Stages = {f"block{i}": block for i, block in enumerate(encoder.blocks(), 1)}
        else:
            stages = {name: [encoder.get_submodule(p) for p in paths]
                      for name, paths in self.pyramid.stages.items()}
        stages[HEAD] = [self.net.decoder, self.net.segmentation_head]
        check_covers(self.net, stages)
        return stages

    @classmethod
    def weights_normalization(cls, name, weights):
        if name.startswith(TIMM):
            return TimmBackbone.weights_normalization(name.removeprefix(TIMM), weights)
        return super().weights_normalization(name, weights)

    def pretrained_state(self, weights):
        if not self.name.startswith(TIMM):
            return super().pretrained_state(weights)
        tag = timm_tag(self.name.removeprefix(TIMM), weights)
        build = {"features_only": True} | self.pyramid.build_args
        return timm_pretrained(tag, **build).state_dict(), f"timm {tag}"

    def map_pretrained(self, state):
        """A transferlab U-Net (state_dict or checkpoint) loads all but the 1x1 head, whose class
        count may differ. A classifier's state_dict (torchvision's, timm's, a transferlab
        classification checkpoint) loads the encoder only: each encoder tensor under its name in
        the classifier (`features.<i>` for the seed's, `layer1.0.conv1.weight` for a ResNet), the
        classifier's own layers left out; what the encoder misses is named by the error."""
        if any(k.startswith(("encoder.", "decoder.")) for k in state):
            return state, ("segmentation_head",)
        mapped = {}
        for key in self.net.encoder.state_dict():
            source = timm_names(key, state)
            if source is not None:
                mapped[f"encoder.{key}"] = state[source]
        return mapped, ("decoder", "segmentation_head")
