import math
import pickle
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from transferlab.errors import ConfigError
from transferlab.models.backbones import TorchvisionBackbone
from transferlab.models.backbones import load_state_dict_file
from transferlab.models.init import HeInit, Pretrained


def imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    """A stand-in for downloaded ImageNet weights: a 1000-class torchvision model's state."""
    torch.manual_seed(123)
    return torchvision.models.get_model(arch, weights=None).state_dict()


def test_he_init_statistics():
    backbone = TorchvisionBackbone("vgg11_bn", 2)
    HeInit()(backbone)
    net = backbone.net
    conv = net.features[0]
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    assert torch.all(conv.bias == 0)
    fc = net.classifier[0]
    assert fc.weight.std().item() == pytest.approx(math.sqrt(2 / fc.in_features), rel=0.05)
    bn = net.features[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_weights_path_loads_everything_but_the_head(tmp_path):
    state = imagenet_state("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    backbone = TorchvisionBackbone("resnet18", 3)
    net = backbone.net
    head_before = net.fc.weight.clone()
    Pretrained(weights_path=str(path))(backbone)
    own = net.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key
    assert torch.equal(net.fc.weight, head_before) and net.fc.out_features == 3


def test_torchvision_weights_come_from_the_torch_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cache = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    cache.parent.mkdir(parents=True)
    state = imagenet_state("resnet18")
    torch.save(state, cache)
    backbone = TorchvisionBackbone("resnet18", 2)
    Pretrained("DEFAULT")(backbone)
    assert torch.equal(backbone.net.conv1.weight, state["conv1.weight"])
    mean, std = Pretrained("IMAGENET1K_V1").normalization(TorchvisionBackbone, "resnet18")
    assert mean == pytest.approx((0.485, 0.456, 0.406))


def test_offline_without_weights_names_the_file_and_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    backbone = TorchvisionBackbone("resnet18", 2)
    net = backbone.net
    before = net.conv1.weight.clone()
    with pytest.raises(ConfigError) as err:
        Pretrained("DEFAULT")(backbone)
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "init.weights_path" in message and "init=he" in message
    assert torch.equal(net.conv1.weight, before), "no silent fallback"


def test_unknown_weights_name():
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        Pretrained("IMAGENET9K").normalization(TorchvisionBackbone, "resnet18")


def test_weights_of_another_architecture_say_which_keys(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(imagenet_state("alexnet"), path)
    with pytest.raises(ConfigError, match=r"missing keys \['conv1.weight'"):
        Pretrained(weights_path=str(path))(TorchvisionBackbone("resnet18", 2))


class RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": RunsCode()}, f)
    with pytest.raises(ConfigError, match="weights_only=True"):
        load_state_dict_file(path)


def test_lightning_checkpoint_state_dict_is_accepted(tmp_path):
    net = nn.Linear(2, 2)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)
    assert set(load_state_dict_file(path)) == {"weight", "bias"}
