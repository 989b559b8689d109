"""IS and FID through torch-fidelity's own extension point (its feature-extractor registry):
FID against the closed form on Gaussians of known mean and covariance, IS against exp(H) of
known class frequencies, the digits extractor against scikit-learn, the weights' preflight."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from normbench.tasks.generation import metrics
from normbench.tasks.generation.metrics import (
    FeatureWeightsMissing,
    check_state_dict_file,
    fidelity_metrics,
    inception_weights,
    metric_names,
)

LOOKUP = "test-lookup"
TABLE: dict[str, torch.Tensor] = {}  # feature name -> (rows, dim) float64, set by each test


class LookupExtractor(FeatureExtractorBase):
    """Each image carries its row number in its three pixels (base 256); its features are
    that row of `TABLE`: known vectors travel through torch-fidelity's whole feature path."""

    def __init__(self, name: str, features_list: list[str], **kwargs: object) -> None:
        super().__init__(name, features_list)  # kwargs: every calculate_metrics argument

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("vector", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "vector"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 1, 1, dtype=torch.uint8)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        digits = images[:, :, 0, 0].long()  # (N, 3)
        rows = digits[:, 0] + 256 * digits[:, 1] + 65536 * digits[:, 2]
        return tuple(TABLE[name][rows] for name in self.features_list)


if LOOKUP not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(LOOKUP, LookupExtractor)


def rows_as_images(start: int, n: int) -> torch.Tensor:
    """uint8 (n, 3, 1, 1) images whose pixels spell the rows start..start+n-1."""
    rows = torch.arange(start, start + n)
    return torch.stack([rows % 256, rows // 256 % 256, rows // 65536], 1).to(torch.uint8)[
        :, :, None, None
    ]


def gaussian(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).multivariate_normal(mean, cov, size=n)


def fid_by_hand(m1, s1, m2, s2) -> float:
    """||m1 - m2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the root by scipy's sqrtm."""
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def run_fid(a: np.ndarray, b: np.ndarray, **kwargs) -> dict[str, float]:
    TABLE["vector"] = torch.as_tensor(np.concatenate([a, b]))
    TABLE["logits"] = torch.zeros(len(a) + len(b), 2, dtype=torch.float64)
    return fidelity_metrics(
        rows_as_images(0, len(a)),
        rows_as_images(len(a), len(b)),
        feature_extractor=LOOKUP,
        **kwargs,
    )


def test_fid_equals_the_closed_form_on_gaussians_of_known_moments() -> None:
    """Commuting covariances (both diagonal in one rotated basis): Tr(S1 + S2 - 2 (S1 S2)^½) is
    sum (sqrt(a_i) - sqrt(b_i))^2 = (1-2)^2 + (2-1)^2 + (3-1)^2 = 6, and ||mu1 - mu2||^2 =
    1 + 4 + 0.25, so FID = 11.25; 40000 samples each estimate it within 0.15."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))  # a rotation
    s1, s2 = q @ np.diag([1.0, 4.0, 9.0]) @ q.T, q @ np.diag([4.0, 1.0, 1.0]) @ q.T
    m1, m2 = np.zeros(3), q @ np.array([1.0, -2.0, 0.5])
    assert fid_by_hand(m1, s1, m2, s2) == pytest.approx(11.25)
    a, b = gaussian(m1, s1, 40_000, 1), gaussian(m2, s2, 40_000, 2)
    fid = run_fid(a, b, isc_splits=1)["FID_test_lookup"]
    assert fid == pytest.approx(11.25, abs=0.15)


def test_fid_equals_the_hand_formula_on_the_sample_moments() -> None:
    """Non-commuting covariances: torch-fidelity's FID is the formula on the samples' mean and
    (unbiased) covariance, to float64 precision."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = x @ x.T + np.eye(4), y @ y.T + 0.5 * np.eye(4)
    a = gaussian(np.ones(4), s1, 500, 4)
    b = gaussian(np.array([0.0, 1.0, -1.0, 2.0]), s2, 700, 5)
    hand = fid_by_hand(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert run_fid(a, b, isc_splits=1)["FID_test_lookup"] == pytest.approx(hand, rel=1e-7)
    assert run_fid(a, a, isc_splits=1)["FID_test_lookup"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("counts", [(100,) * 10, (300, 150, 150), (600,)])
def test_is_is_exp_entropy_of_class_frequencies_for_confident_predictions(counts) -> None:
    """p(y|x) one-hot: KL(p(y|x) || p(y)) = -log q_y, so IS = exp(H(q)) for class frequencies
    q (10 balanced classes: 10; one class: 1); one split."""
    labels = np.repeat(np.arange(len(counts)), counts)
    logits = np.full((len(labels), 10), -50.0)
    logits[np.arange(len(labels)), labels] = 50.0
    found = run_is(logits, splits=1)
    q = np.asarray(counts) / sum(counts)
    assert found["IS_test_lookup"] == pytest.approx(float(np.exp(-(q * np.log(q)).sum())))
    assert found["FID_test_lookup"] == pytest.approx(0.0, abs=1e-9)


def test_is_of_one_prediction_everywhere_is_one_in_every_split() -> None:
    logits = np.tile(np.random.default_rng(0).normal(size=10), (600, 1))
    found = run_is(logits, splits=10)
    assert found["IS_test_lookup"] == pytest.approx(1.0) and found["IS_test_lookup_std"] < 1e-12


def run_is(logits: np.ndarray, splits: int) -> dict[str, float]:
    TABLE["logits"] = torch.as_tensor(logits)
    TABLE["vector"] = torch.as_tensor(np.random.default_rng(0).normal(size=(len(logits), 2)))
    images = rows_as_images(0, len(logits))
    return fidelity_metrics(images, images, feature_extractor=LOOKUP, isc_splits=splits)


def test_metric_names_say_which_extractor() -> None:
    assert metric_names("inception-v3-compat") == {"is": "IS", "is_std": "IS_std", "fid": "FID"}
    assert metric_names("normbench-digits")["fid"] == "FID_digits"
    assert metric_names("clip-vit-b-32")["is"] == "IS_clip_vit_b_32"


def test_digits_extractor_is_scikit_learns_classifier_through_the_registry() -> None:
    """The torch port gives scikit-learn's probabilities; through torch-fidelity the real test
    digits score IS > 8 and a small FID to the training digits, noise a large one."""
    from normbench.tasks.generation import digits_features as df

    train, test = df.digits_split()
    clf = df.fitted_classifier()
    x = df.preprocess(test.images)
    assert clf.score(x.numpy(), test.labels.numpy()) > 0.95
    probs = torch.softmax(df.classifier_module()(x), dim=1).detach().numpy()
    np.testing.assert_allclose(probs, clf.predict_proba(x.numpy()), atol=1e-5)
    real = fidelity_metrics(
        test.images, train.images, feature_extractor="normbench-digits", isc_splits=1
    )
    assert "normbench-digits" in FEATURE_EXTRACTORS_REGISTRY
    noise = torch.randint(0, 256, test.images.shape, generator=torch.Generator().manual_seed(0))
    fake = fidelity_metrics(
        noise.to(torch.uint8), train.images, feature_extractor="normbench-digits"
    )
    assert real["IS_digits"] > 8 and fake["IS_digits"] < real["IS_digits"]
    assert real["FID_digits"] * 10 < fake["FID_digits"]


def test_unknown_extractor_names_the_choices() -> None:
    with pytest.raises(metrics.UserError, match="unknown feature extractor 'nope'.*inception-v3"):
        fidelity_metrics(rows_as_images(0, 2), rows_as_images(0, 2), feature_extractor="nope")


def test_inception_weights_preflight(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    name = metrics.inception_url().rsplit("/", 1)[-1]
    with pytest.raises(FeatureWeightsMissing) as info:
        inception_weights()
    line = str(info.value)
    assert "\n" not in line and name in line and str(hub / "checkpoints") in line
    assert "normbench-digits" in line
    with pytest.raises(FeatureWeightsMissing, match="not a file"):
        inception_weights(str(tmp_path / "missing.pth"))
    (hub / "checkpoints").mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, hub / "checkpoints" / name)
    assert inception_weights() == hub / "checkpoints" / name
    check_state_dict_file(hub / "checkpoints" / name)  # tensors only: accepted


def test_a_weights_file_with_code_is_refused(tmp_path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(1), "obj": collections.UserDict()}, path)
    with pytest.raises(metrics.UserError, match="not a plain state dict"):
        check_state_dict_file(path)


@pytest.mark.slow
def test_the_inception_path_with_a_weights_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inception-v3 of torch-fidelity, fed from a named weights file (random weights of the
    right shapes: the real file is not on this machine), scores one-channel images as RGB
    under the papers' names IS and FID; the hub cache is never asked."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with monkeypatch.context() as patch:  # build once without weights, to save its shapes
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        patch.setattr(torch, "load", lambda *a, **k: None)
        module = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path="unused"
        )
    path = tmp_path / "inception.pth"
    torch.save(module.state_dict(), path)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    g = torch.Generator().manual_seed(0)
    fake, real = (torch.randint(0, 256, (2, 1, 8, 8), generator=g).to(torch.uint8) for _ in "ab")
    found = fidelity_metrics(fake, real, weights=str(path), isc_splits=1)
    assert set(found) == {"IS", "IS_std", "FID"}  # two images each: Inception is slow on a CPU
    # IS = exp(mean KL) >= 1, up to rounding (two identical predictions give 0.9999999999999997)
    assert found["IS"] >= 1.0 - 1e-9 and np.isfinite(found["FID"]) and found["FID"] > 0
