"""The `augment` group: each policy builds, geometric ops move image and mask together (checked
pixel by pixel), photometric ops leave the mask alone, and the off switch gives the val transform."""

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image
from torchvision import tv_tensors

from transferlab.config import compose
from transferlab.data import classification, segmentation
from transferlab.data.augment import AutoAugment, Basic, NoAugment, RandAugment, TrivialAugment
from transferlab.errors import ConfigError

MEAN, STD = [0.0] * 3, [1.0] * 3  # identity normalisation: the check reads pixel values back


def pair(size=48):
    """An image whose red channel is the mask (255 inside a rectangle, 0 outside), random texture
    in green and blue, and that mask."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(size, size, dtype=torch.long)
    mask[10:30, 14:40] = 1
    image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
    image[0] = (mask * 255).to(torch.uint8)
    return tv_tensors.Image(image), tv_tensors.Mask(mask[None])


@pytest.mark.parametrize("policy", [Basic(jitter=0), Basic(jitter=0, rotation=30, scale=[0.3, 1.0])])
def test_geometric_ops_move_image_and_mask_together(policy):
    transform = segmentation.train_transform(32, MEAN, STD, policy)
    image, mask = pair()
    for seed in range(40):
        torch.manual_seed(seed)
        x, y = transform(image, mask)
        red, y = x[0] * 255, y[0]
        assert y.shape == red.shape == (32, 32)
        # Away from the edge (where the image is resampled bilinearly and the mask by nearest
        # neighbour, a pixel apart at most): wherever a pixel and its 8 neighbours are all inside
        # (all outside) on the image, the mask says inside (outside) there.
        lowest = -F.max_pool2d(-red[None, None], 3, 1, 1)[0, 0]
        highest = F.max_pool2d(red[None, None], 3, 1, 1)[0, 0]
        inside, outside = lowest > 250, highest < 5
        assert inside.any() and outside.any()
        assert (y[inside] == 1).all() and (y[outside] == 0).all(), seed


@pytest.mark.parametrize("policy", [TrivialAugment(), RandAugment(num_ops=3, magnitude=20)])
def test_photometric_policies_leave_the_mask_alone_for_segmentation(policy):
    image, mask = pair(32)
    ops = [op for op in policy.segmentation(32)[-1:]]  # the policy alone, after the joint ops
    for seed in range(40):
        torch.manual_seed(seed)
        _, y = ops[0](image, mask)
        assert torch.equal(y, mask)


def test_autoaugment_is_refused_for_segmentation_by_name():
    AutoAugment().classification(32)
    with pytest.raises(ConfigError, match="augment=autoaugment is for classification"):
        AutoAugment().segmentation(32)


@pytest.mark.parametrize("policy", [Basic(), TrivialAugment(), RandAugment(), AutoAugment()])
def test_every_classification_policy_gives_a_normalised_tensor(policy):
    x = classification.train_transform(32, MEAN, STD, policy)(Image.new("RGB", (40, 30), (200, 30, 30)))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


@pytest.mark.parametrize("option,kind", [("basic", Basic), ("none", NoAugment),
                                          ("trivialaugment", TrivialAugment),
                                          ("randaugment", RandAugment), ("autoaugment", AutoAugment)])
def test_each_option_is_a_policy_and_none_turns_augmentation_off(tmp_path, image_folder, option, kind):
    cfg = compose([f"augment={option}", f"data.root={image_folder}"], tmp_path)
    data = instantiate(cfg.data, augmentation=cfg.augment)
    assert type(data.augmentation) is kind and data.augment is (option != "none")
