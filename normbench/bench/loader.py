"""`normbench bench loader`: images/s of the tensor loader vs a torchvision DataLoader.

Both serve the same CIFAR-shaped data (random uint8, 50k x 3 x 32 x 32, in memory) with the
CIFAR-100 recipe: RandomCrop(32, padding=4), RandomHorizontalFlip, RandomRotation(15), then
ToTensor + Normalize, batch 128, shuffled, drop_last. The DataLoader side converts every
image to PIL in `__getitem__`, as torchvision's CIFAR dataset does, and runs with 0 and 2
workers (this machine's core count), fresh workers each epoch (the DataLoader default and
what pytorch-cifar100 does), so worker start-up is part of the measured time. A second set
of rows drops the rotation. Wall time covers one full pass over the data (`quick`: fewer
images and repeats); the number of repeats n is shown with each mean and std.

Torch runs with one thread throughout: the DataLoader's workers run one thread each too, so
the tensor loader gets one core against the 2-worker DataLoader's two. On a shared,
oversubscribed machine a second OpenMP thread makes small tensor ops far slower, not faster.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from normbench.bench.machine import describe_machine
from normbench.data.base import Augment, TensorSet
from normbench.data.cifar import CIFAR100_MEAN, CIFAR100_STD
from normbench.data.tensor_loader import TensorLoader

BATCH = 128


class PILArrayDataset(Dataset):
    """uint8 HWC images served as PIL images through a transform, like torchvision CIFAR."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Any) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _pil_transform(rotation: bool) -> T.Compose:
    steps: list[Any] = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
    if rotation:
        steps.append(T.RandomRotation(15))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(CIFAR100_MEAN, CIFAR100_STD)])


def _time_pass(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_batches: int | None
) -> float:
    """Images per second over one pass (stopping after max_batches when given)."""
    start, n = time.perf_counter(), 0
    for k, (x, _) in enumerate(batches):
        n += x.shape[0]
        if max_batches is not None and k + 1 >= max_batches:
            break
    return n / (time.perf_counter() - start)


def _tensor_rates(data: TensorSet, rotation: bool, repeats: int) -> list[float]:
    aug = Augment(crop_padding=4, hflip=True, rotation=15.0 if rotation else 0.0)
    loader = TensorLoader(
        data,
        batch_size=BATCH,
        device="cpu",
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        train=True,
        augment=aug,
        seed=0,
    )
    _time_pass(loader, 5)  # warm-up: first-call allocations
    return [_time_pass(loader, None) for _ in range(repeats)]


def _dataloader_rates(
    data: TensorSet, rotation: bool, workers: int, repeats: int, max_batches: int | None
) -> list[float]:
    hwc = data.images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, 32, 32, 3)
    ds = PILArrayDataset(hwc, data.labels.numpy(), _pil_transform(rotation))
    loader = DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    return [_time_pass(loader, max_batches) for _ in range(repeats)]


def _fmt(rates: list[float]) -> str:
    sd = statistics.stdev(rates) if len(rates) > 1 else 0.0
    return f"{statistics.mean(rates):,.0f} ± {sd:,.0f} (n={len(rates)})"


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    return describe_machine(("torch", "torchvision"))


def measure(n_images: int, repeats: int, max_batches: int | None) -> list[dict[str, Any]]:
    """One row per (augmentation, loader): rates in images/s."""
    g = torch.Generator().manual_seed(0)
    data = TensorSet(
        torch.randint(0, 256, (n_images, 3, 32, 32), generator=g, dtype=torch.uint8),
        torch.randint(0, 100, (n_images,), generator=g),
    )
    rows: list[dict[str, Any]] = []
    for rotation in (True, False):
        aug = "crop+flip+rotate15" if rotation else "crop+flip"
        tensor = _tensor_rates(data, rotation, repeats)
        rows.append({"aug": aug, "loader": "tensor loader (this project)", "rates": tensor})
        for workers in (0, 2):
            rates = _dataloader_rates(data, rotation, workers, max(1, repeats - 1), max_batches)
            rows.append(
                {
                    "aug": aug,
                    "loader": f"DataLoader + PIL, num_workers={workers}",
                    "rates": rates,
                    "speedup": statistics.mean(tensor) / statistics.mean(rates),
                }
            )
    return rows


def render(
    rows: list[dict[str, Any]], env: dict[str, str], n_images: int, max_batches: int | None
) -> str:
    lines = [
        "# Data-loader throughput (images/s, batch 128, CPU)",
        "",
        f"{n_images:,} random uint8 CIFAR-shaped images (3x32x32) in memory. "
        "Speed-up = tensor loader / that DataLoader, same augmentation.",
        "",
    ]
    if max_batches is not None:
        lines += [f"Quick run: DataLoader rows time {max_batches} batches.", ""]
    lines += [
        "| augmentation | loader | images/s (mean ± std) | tensor loader speed-up |",
        "|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r['speedup']:.1f}x" if "speedup" in r else "-"
        lines.append(f"| {r['aug']} | {r['loader']} | {_fmt(r['rates'])} | {speed} |")
    lines += ["", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += ["", "The machine is shared: compare rows of one report, not across reports.", ""]
    return "\n".join(lines)


def run(output: Path, *, quick: bool = False) -> Path:
    """Measure and write the Markdown report to `output`; returns its path."""
    n_images, repeats, max_batches = (5_000, 1, 20) if quick else (50_000, 3, None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = machine()
        rows = measure(n_images, repeats, max_batches)
    finally:
        torch.set_num_threads(threads)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(rows, env, n_images, max_batches))
    return output


if __name__ == "__main__":
    print(run(Path("reports/bench_loader.md")))
