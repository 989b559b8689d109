"""Inception Score and FID by torch-fidelity (toshas/torch-fidelity), the maintained
implementation whose Inception-v3 is bit-exact with the TensorFlow original the papers used.

    IS  = exp(E_x KL(p(y|x) || p(y)))      mean (and std) over `isc_splits` splits of the
          generated samples; Salimans et al., NeurIPS 2016, arXiv 1606.03498. Higher is better.
    FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))   between the Gaussians fitted to the
          features of generated and real images; Heusel et al., NeurIPS 2017, arXiv 1706.08500.
          Lower is better.

`fidelity_metrics(fake, real, ...)` hands both sets to `torch_fidelity.calculate_metrics` as
uint8 image datasets and returns {"IS": .., "IS_std": .., "FID": ..} (names from
`metric_names`). The feature extractor is any name in torch-fidelity's registry:
"inception-v3-compat" (the papers' Inception; its metrics are `IS` and `FID`), or one
registered through `torch_fidelity.register_feature_extractor`, such as normbench's small
`normbench-digits` (`digits_features`), whose metrics carry its name (`IS_digits`,
`FID_digits`): they are never shown beside the papers' Inception numbers.

No download at run time: the Inception weights come from torch's hub cache, where
torch-fidelity's first online use puts them, or from a file the user names;
`inception_weights(path)` finds them or raises `FeatureWeightsMissing`, one line saying which
file to put where. The file is first read with `weights_only=True` (a plain state dict, no
code), then given to torch-fidelity. torch-fidelity's file cache is off (it unpickles), and it
runs without worker processes.

What the SaBN paper measured (its `GAN/functions.py`, `metrics/`): 50000 samples with uniform
random classes; IS by the TensorFlow Inception (10 splits); FID by a PyTorch port of Inception
against precomputed statistics of the CIFAR-10 training set. torch-fidelity computes both with
one Inception, bit-exact with TensorFlow's; the reference images here are the training split.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from normbench.errors import UserError

INCEPTION = "inception-v3-compat"
# normbench's own extractors, registered with torch-fidelity on first use: name -> class path
OWN_EXTRACTORS = {
    "normbench-digits": "normbench.tasks.generation.digits_features:DigitsFeatureExtractor"
}
SHORT_NAMES = {INCEPTION: "", "normbench-digits": "digits"}


class FeatureWeightsMissing(UserError, FileNotFoundError):
    """A feature extractor's weights are not on this machine."""


def inception_url() -> str:
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return str(URL_INCEPTION_V3)


def inception_weights(path: str | None = None) -> Path:
    """The Inception-v3 weights file torch-fidelity needs: `path` if given, else the file in
    torch's hub cache (`torch.hub.get_dir()/checkpoints/`). Raises FeatureWeightsMissing with
    one line saying which file to put where."""
    url = inception_url()
    name = url.rsplit("/", 1)[-1]
    if path is not None:
        found = Path(path).expanduser()
        if found.is_file():
            return found
        raise FeatureWeightsMissing(
            f"Inception weights for IS/FID: {found} is not a file; download {url} there"
        )
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    if cached.is_file():
        return cached
    raise FeatureWeightsMissing(
        f"Inception weights for IS/FID are not in torch's hub cache: put {name} (from {url}) "
        f"in {cached.parent}, or name the file with feature_extractor_weights, or use the "
        "feature extractor normbench-digits (not comparable with the papers' numbers)"
    )


def check_state_dict_file(path: Path) -> None:
    """Raise UserError unless `path` loads with `weights_only=True` (tensors only, no code)."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path} is not a plain state dict of tensors ({exc})") from exc


def metric_names(feature_extractor: str) -> dict[str, str]:
    """{"is": .., "is_std": .., "fid": ..}: `IS`, `IS_std`, `FID` with Inception, else the same
    with the extractor's short name appended (`IS_digits`), letters, digits and `_` only."""
    short = SHORT_NAMES.get(feature_extractor)
    if short is None:
        short = re.sub(r"[^0-9A-Za-z]+", "_", feature_extractor).strip("_")
    tail = f"_{short}" if short else ""
    return {"is": f"IS{tail}", "is_std": f"IS{tail}_std", "fid": f"FID{tail}"}


def ensure_registered(feature_extractor: str) -> None:
    """Register normbench's own extractor with torch-fidelity (once); any other name must be
    in torch-fidelity's registry already. Raises UserError naming the choices otherwise."""
    import importlib

    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if feature_extractor in FEATURE_EXTRACTORS_REGISTRY:
        return
    if feature_extractor in OWN_EXTRACTORS:
        module, cls = OWN_EXTRACTORS[feature_extractor].split(":")
        register_feature_extractor(feature_extractor, getattr(importlib.import_module(module), cls))
        return
    choices = sorted({*FEATURE_EXTRACTORS_REGISTRY, *OWN_EXTRACTORS})
    raise UserError(
        f"unknown feature extractor {feature_extractor!r}; torch-fidelity's registry and "
        f"normbench offer: {', '.join(choices)}"
    )


class ImageTensors(Dataset):
    """uint8 images (N, C, H, W) as torch-fidelity's dataset input: (3, H, W) per item, a
    single channel repeated (Inception takes RGB)."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be uint8 (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        self.images = images.cpu()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i].expand(3, -1, -1).contiguous()


def fidelity_metrics(
    fake: torch.Tensor,
    real: torch.Tensor,
    *,
    feature_extractor: str = INCEPTION,
    weights: str | None = None,
    device: torch.device | str = "cpu",
    isc_splits: int = 10,
    batch_size: int = 100,
    seed: int = 2020,
) -> dict[str, float]:
    """IS of `fake` and FID between `fake` and `real` (uint8 (N, C, H, W) each), computed by
    `torch_fidelity.calculate_metrics` with `feature_extractor`; keys from `metric_names`.
    `weights` names the Inception file (default: the hub cache); `seed` is torch-fidelity's
    (the IS splits' shuffle)."""
    import torch_fidelity

    ensure_registered(feature_extractor)
    extra: dict[str, Any] = {}
    if feature_extractor == INCEPTION:
        path = inception_weights(weights)
        check_state_dict_file(path)
        extra["feature_extractor_weights_path"] = str(path)
    found = torch_fidelity.calculate_metrics(
        input1=ImageTensors(fake),
        input2=ImageTensors(real),
        isc=True,
        fid=True,
        feature_extractor=feature_extractor,
        isc_splits=isc_splits,
        batch_size=batch_size,
        cuda=torch.device(device).type == "cuda",
        cache=False,  # its cache unpickles files
        save_cpu_ram=True,  # no DataLoader worker processes
        rng_seed=seed,
        verbose=False,
        **extra,
    )
    names = metric_names(feature_extractor)
    return {
        names["is"]: float(found[torch_fidelity.KEY_METRIC_ISC_MEAN]),
        names["is_std"]: float(found[torch_fidelity.KEY_METRIC_ISC_STD]),
        names["fid"]: float(found[torch_fidelity.KEY_METRIC_FID]),
    }
