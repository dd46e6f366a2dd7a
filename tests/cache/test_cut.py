"""Running a network up to a stage's output and from there on (`transferlab.cache.cut`): the cached
path computes what the network computes, for every family."""

import pytest
import torch

from transferlab.cache.cut import cut_module, forward_until, runner, tail
from transferlab.errors import ConfigError
from transferlab.models.backbones import HEAD, TimmBackbone, TorchvisionBackbone, UNetBackbone


def same_logits_from_every_cut(backbone, x):
    net = backbone.net.eval()
    with torch.no_grad():
        logits = net(x)
        for cut in backbone.stages():
            rest = runner(backbone, cut, x[0])
            assert torch.equal(rest(forward_until(backbone, cut, x)), logits), cut
    return rest


@pytest.mark.parametrize("name,size,args", [
    ("resnet18", 64, {}), ("mobilenet_v2", 64, {}), ("densenet121", 64, {}),
    ("squeezenet1_1", 64, {}),  # a conv head: the forward pools and flattens after it
    ("googlenet", 64, {}), ("vit_b_16", 32, {"image_size": 32}),
])
def test_the_network_cut_after_any_stage_computes_the_same_logits(name, size, args):
    torch.manual_seed(0)
    backbone = TorchvisionBackbone(name, 3, **args)
    same_logits_from_every_cut(backbone, torch.randn(2, 3, size, size))
    last_body = list(backbone.stages())[-2]
    rest = tail(backbone, cut_module(backbone, last_body), last_body)
    assert rest.get_submodule(backbone.head_path) is backbone.head  # shared, not copied


@pytest.mark.parametrize("name,args", [("convnext_atto", {}), ("vit_tiny_patch16_224", {"img_size": 32})])
def test_a_timm_network_cut_after_any_stage_computes_the_same_logits(name, args):
    torch.manual_seed(0)
    same_logits_from_every_cut(TimmBackbone(name, 3, **args), torch.randn(2, 3, 32, 32))


def test_the_head_runner_is_the_head_alone_where_the_forward_ends_with_it():
    backbone = TorchvisionBackbone("resnet18", 3)
    rest = runner(backbone, HEAD, torch.randn(3, 32, 32))
    assert list(rest) == [backbone.head]


def test_a_skip_connection_across_the_cut_is_refused():
    backbone = UNetBackbone(num_classes=2)
    with pytest.raises(ConfigError, match="cannot run from the output of block3: decoder also reads"):
        tail(backbone, cut_module(backbone, "block3"), "block3")
