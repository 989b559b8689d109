"""The blocks together, without a script: AdaIN's network with `adain` and with `saadain` from
the registry trains a few iterations on generated content and style folders (digits, textures)
as the official `train.py` does (Adam on the decoder and the layer's parameters, the loss
content + 10·style, lr / (1 + 5e-5·iteration)), and its validation content and style losses
(`PairLoader`'s k-th content with k-th style, centre crops) are measured before and after.

The encoder is random (`encoder_weights: random`, widths / 16); the learning rate is 1e-3, not
the paper's 1e-4, so 40 iterations show the losses falling. Measured on this 2-core machine
(load average ~20, one thread): AdaIN's weighted validation loss went from 1.394 to 1.046
(content 0.0032 -> 0.0029, 10·style 1.390 -> 1.043), SaAdaIN's from 1.394 to 1.046 (content
0.0028); about 5 s of training each.
"""

from __future__ import annotations

import pytest
import torch

from normbench.models.adain import StyleTransferNet, decoder
from normbench.models.vgg_encoder import load_encoder
from normbench.tasks.style_transfer.data import FlatImageFolder, PairLoader
from normbench.tasks.style_transfer.synthetic import FolderSpec, StyleFolders, style_folders
from normbench.variants_api import create_norm

pytestmark = pytest.mark.slow
SPEC = FolderSpec(n_train=160, n_val=16, size=40, seed=0)
STYLE_WEIGHT, LR, LR_DECAY = 10.0, 1e-3, 5e-5


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> StyleFolders:
    return style_folders(SPEC, root=str(tmp_path_factory.mktemp("data")))


def _loader(folders: StyleFolders, split: str, train: bool) -> PairLoader:
    return PairLoader(
        FlatImageFolder(folders.folder("content", split)),
        FlatImageFolder(folders.folder("style", split)),
        batch_size=4 if train else 8,
        device="cpu",
        train=train,
        load_size=40,
        crop_size=32,
        seed=0,
    )


@torch.no_grad()
def _validate(net: StyleTransferNet, folders: StyleFolders) -> tuple[float, float]:
    """(content, weighted style) mean validation losses, as the official `val_func`."""
    net.eval()
    content = style = 0.0
    n = 0
    for c, s in _loader(folders, "val", False):
        losses = net(c, s)
        content += losses.content.sum().item()
        style += STYLE_WEIGHT * losses.style.sum().item()
        n += len(c)
    net.train()
    return content / n, style / n


@pytest.mark.parametrize("variant", ["adain", "saadain"])
def test_the_network_trains_and_its_losses_fall(variant: str, folders: StyleFolders) -> None:
    torch.manual_seed(0)
    encoder = load_encoder("random", width_divisor=16)
    net = StyleTransferNet(encoder, decoder(encoder.channels[-1]), create_norm(variant, 32))
    params = [p for p in net.parameters() if p.requires_grad]
    assert len(params) == len(list(net.decoder.parameters())) + (2 if variant == "saadain" else 0)
    optimizer = torch.optim.Adam(params, lr=LR)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 / (1 + LR_DECAY * i))
    before = _validate(net, folders)
    steps = 0
    for content, style in _loader(folders, "train", True):
        losses = net(content, style)
        loss = losses.content.mean() + STYLE_WEIGHT * losses.style.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        steps += 1
    after = _validate(net, folders)
    assert steps == 40
    assert sum(after) < 0.85 * sum(before), (before, after)
    assert after[1] < before[1]
    if variant == "saadain":  # its shared affine trained too
        assert not torch.equal(net.style_norm.weight, torch.ones(32))
