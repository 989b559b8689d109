"""`normbench-digits`: a small feature extractor for IS and FID of generated digits, through
torch-fidelity's own extension point (`torch_fidelity.register_feature_extractor`).

IS and FID as published use Inception-v3 trained on ImageNet, whose weights a CPU-only,
offline machine may not have, and whose features say little about 8x8 handwritten digits.
This is the "MNIST score" practice instead (a classifier of the data's own classes in place of
Inception; e.g. Li et al., "ALICE", NeurIPS 2017): a multilayer perceptron with one hidden layer
of 64 ReLU units, fitted by scikit-learn (`MLPClassifier`, seed 0) on the 1437 training digits
of `normbench.data.digits` (its fixed test split held out), then copied into torch layers.
Numbers computed with it are comparable with each other, never with the papers' Inception
numbers; the metrics carry its name (`IS_digits`, `FID_digits`).

Input: uint8 images (N, 3, H, W) of any side (torch-fidelity's convention), averaged over the
channels and area-resized to 8x8 (`adaptive_avg_pool2d`; the digits' native side), scaled to
[0, 1]. Features: `hidden` (N, 64), the ReLU layer, for FID; `logits` (N, 10), the
pre-softmax outputs, for IS. The fit is deterministic for a given scikit-learn and BLAS and
takes about a second; it happens once per process.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity import FeatureExtractorBase

NAME = "normbench-digits"
HIDDEN = 64
SIDE = 8


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float (N, 64): channel mean, area-resized to 8x8, in [0, 1]."""
    gray = images.float().mean(dim=1, keepdim=True)  # (N, 1, H, W)
    return F.adaptive_avg_pool2d(gray, SIDE).flatten(1) / 255.0  # (N, 64)


@functools.cache
def fitted_classifier() -> Any:
    """scikit-learn's MLP (64 ReLU units, seed 0) fitted on normbench's digits training split."""
    from sklearn.neural_network import MLPClassifier

    train, _ = digits_split()
    clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), random_state=0, max_iter=2000)
    clf.fit(preprocess(train.images).numpy(), train.labels.numpy())
    return clf


def digits_split() -> tuple[Any, Any]:
    """normbench's digits at their native 8x8: the fixed (training, test) TensorSets."""
    from normbench.data.base import stratified_split
    from normbench.data.digits import DIGITS_TEST_FRACTION, DIGITS_TEST_SEED, load_digits_tensor

    full = load_digits_tensor(SIDE)
    train_idx, test_idx = stratified_split(
        full.labels.numpy(), DIGITS_TEST_FRACTION, DIGITS_TEST_SEED
    )
    return full.subset(train_idx), full.subset(test_idx)


def classifier_module() -> nn.Sequential:
    """The fitted MLP as torch layers: Linear(64, 64), ReLU, Linear(64, 10)."""
    clf = fitted_classifier()
    linears = (nn.Linear(SIDE * SIDE, HIDDEN), nn.Linear(HIDDEN, len(clf.classes_)))
    with torch.no_grad():
        for linear, w, b in zip(linears, clf.coefs_, clf.intercepts_, strict=True):
            linear.weight.copy_(torch.as_tensor(w.T))  # scikit-learn stores (in, out)
            linear.bias.copy_(torch.as_tensor(b))
    return nn.Sequential(linears[0], nn.ReLU(), linears[1])


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor: `hidden` (N, 64) and `logits` (N, 10) of the digits
    MLP for uint8 images (N, C, H, W); see the module doc."""

    def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
        super().__init__(name, features_list)
        self.net = classifier_module()
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("hidden", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "hidden"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, SIDE, SIDE, dtype=torch.uint8)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = preprocess(images).to(next(self.net.parameters()).device)
        hidden = self.net[1](self.net[0](x))  # (N, 64)
        found = {"hidden": hidden, "logits": self.net[2](hidden)}  # logits (N, 10)
        return tuple(found[name] for name in self.features_list)
