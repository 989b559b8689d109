"""AdaIN's encoder-decoder (normbench/models/adain.py) and its weights (vgg_encoder.py): the
official layout, weight files in their real formats written by the test (never downloaded)
checked against a functional computation from the file's tensors, the one-line errors for a
missing or foreign file, and the network's losses and frozen encoder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.errors import UserError
from normbench.models.adain import StyleTransferNet, decoder
from normbench.models.style_losses import content_loss, style_loss
from normbench.models.vgg_encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderWeightsNotFound,
    adain_encoder,
    flat_encoder_modules,
    load_encoder,
)
from normbench.variants_api import create_norm, norm_layer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from style_files import CONVS, vgg_normalised_state  # noqa: E402

POOLS = (7, 14, 27)
# the decoder's parameters by hand: 3x3 convolutions 512-256, 3x 256-256, 256-128, 128-128,
# 128-64, 64-64, 64-3, weights and biases
DECODER_PARAMS = sum(9 * i * o + o for i, o in [(512, 256), (256, 256), (256, 256), (256, 256),
                     (256, 128), (128, 128), (128, 64), (64, 64), (64, 3)])  # fmt: skip


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub dir (TORCH_HOME); its checkpoints folder is where files go."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def _functional_relu4_1(state: dict[str, torch.Tensor], x: torch.Tensor, mode: str) -> torch.Tensor:
    """relu4_1 from the tensors alone: pad (mode) + conv + ReLU, and the pools."""
    convs = [(i, k) for i, _, _, k in CONVS]
    x = F.conv2d(x, state[f"{convs[0][0]}.weight"], state[f"{convs[0][0]}.bias"])
    for n, (index, _) in enumerate(convs[1:], start=1):
        if n in (3, 5, 9):  # a pool before conv2_1, conv3_1, conv4_1
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        x = F.pad(x, (1, 1, 1, 1), mode=mode)
        x = F.relu(F.conv2d(x, state[f"{index}.weight"], state[f"{index}.bias"]))
    return x


def test_adain_encoder_has_the_official_layout_and_indices() -> None:
    modules = flat_encoder_modules(adain_encoder())
    assert len(modules) == 31
    for index, out, inp, k in CONVS:
        conv = modules[index]
        assert isinstance(conv, nn.Conv2d) and conv.weight.shape == (out, inp, k, k), index
        if k == 3:
            assert isinstance(modules[index - 1], nn.ReflectionPad2d), index
            assert isinstance(modules[index + 1], nn.ReLU), index
    for index in POOLS:
        assert isinstance(modules[index], nn.MaxPool2d) and modules[index].ceil_mode
    small = adain_encoder(16)
    assert small.channels == (4, 8, 16, 32)


def test_decoder_mirrors_the_encoder() -> None:
    d = decoder(512)
    assert sum(p.numel() for p in d.parameters()) == DECODER_PARAMS
    assert sum(isinstance(m, nn.Upsample) and m.mode == "nearest" for m in d) == 3
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) for m in d)
    assert d(torch.rand(2, 512, 3, 4)).shape == (2, 3, 24, 32)
    assert decoder(32)(torch.rand(1, 32, 2, 2)).shape == (1, 3, 16, 16)


def test_vgg_normalised_file_is_loaded_as_its_indices_say(hub: Path) -> None:
    state = vgg_normalised_state(0)
    torch.save(state, hub / "vgg_normalised.pth")
    encoder = load_encoder("vgg_normalised")
    assert not any(p.requires_grad for p in encoder.parameters())
    x = torch.rand(2, 3, 20, 20)
    features = encoder(x)
    assert [f.shape[1] for f in features] == [64, 128, 256, 512]
    assert features[-1].shape[-2:] == (3, 3)  # ceil-mode pools: 20 -> 10 -> 5 -> 3
    torch.testing.assert_close(features[-1], _functional_relu4_1(state, x, "reflect"))


def test_a_given_path_is_read_instead_of_the_cache(tmp_path: Path, hub: Path) -> None:
    state = vgg_normalised_state(1)
    torch.save(state, tmp_path / "mine.pth")
    encoder = load_encoder("vgg_normalised", str(tmp_path / "mine.pth"))
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(encoder(x)[-1], _functional_relu4_1(state, x, "reflect"))


def test_torchvision_weights_from_the_cache_behind_the_imagenet_normalisation(hub: Path) -> None:
    """Its `features.<i>` keys (i < 21), zero padding, (x - mean) / std in front."""
    ours = vgg_normalised_state(2)
    tv = {}
    for (index, *_), tv_index in zip(CONVS[1:], (0, 2, 5, 7, 10, 12, 14, 16, 19), strict=True):
        tv[f"features.{tv_index}.weight"] = ours[f"{index}.weight"]
        tv[f"features.{tv_index}.bias"] = ours[f"{index}.bias"]
    torch.save(tv, hub / "vgg19-dcbb9e9d.pth")
    encoder = load_encoder("torchvision")
    x = torch.rand(2, 3, 16, 16)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    ours["0.weight"] = torch.diag(1 / std).reshape(3, 3, 1, 1)
    ours["0.bias"] = -mean / std
    torch.testing.assert_close(encoder(x)[-1], _functional_relu4_1(ours, x, "constant"))


def test_missing_or_foreign_weights_are_one_line(hub: Path, tmp_path: Path) -> None:
    for source, name in (
        ("vgg_normalised", "vgg_normalised.pth"),
        ("torchvision", "vgg19-dcbb9e9d.pth"),
    ):
        with pytest.raises(EncoderWeightsNotFound) as info:
            load_encoder(source)
        message = str(info.value)
        assert "\n" not in message and f"put {name}" in message and str(hub / name) in message
    state = vgg_normalised_state(3)
    state["9.weight"] = state["9.weight"][:, :32]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"key '9.weight' holds \(128, 32, 3, 3\)"):
        load_encoder("vgg_normalised", str(tmp_path / "bad.pth"))
    with pytest.raises(UserError, match="not torchvision's VGG-19"):
        load_encoder("torchvision", str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="encoder_weights must be one of"):
        load_encoder("imagenet")


def test_the_network_computes_adain_losses_and_trains_only_decoder_and_layer() -> None:
    torch.manual_seed(0)
    encoder = load_encoder("random", width_divisor=16)
    net = StyleTransferNet(encoder, decoder(32), create_norm("saadain", 32))
    content, style = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 24, 16)
    losses = net(content, style)
    t = net.style_norm(encoder(content)[-1], encoder(style)[-1])
    out = encoder(net.decoder(t))
    torch.testing.assert_close(losses.content, content_loss(out[-1], t))
    torch.testing.assert_close(losses.style, style_loss(out, encoder(style)))
    (losses.content.mean() + 10 * losses.style.mean()).backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None for p in net.decoder.parameters())
    assert net.style_norm.weight.grad is not None and net.style_norm.weight.grad.abs().sum() > 0
    assert net.stylize(content, style, alpha=0.5).shape == content.shape
    # the network's slot passes the style: a plain layer is refused where the slot is filled
    with pytest.raises(UserError, match="'bn' is not style-conditioned"):
        norm_layer("bn", conditioning="style")
    assert type(norm_layer("saadain", conditioning="style")(32)) is type(net.style_norm)
