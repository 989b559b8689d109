"""Which FCT values make UBN freeze anything? (issue 12.2)

Trains UBN through `run_trial` (the only training loop) for a grid of tau values and both
decision rules (`decide` set explicitly, so the numbers do not depend on the default), and
prints, from the layers' own diagnostics in the last epoch's record:

- frozen share: sum over layers of `frozen_steps` / sum of (`frozen_steps` + `batch_steps`),
  i.e. the share of layer-steps normalised with frozen running statistics;
- layers that froze at least once, of all UBN layers;
- the range of the layers' running similarity at the end of each epoch.

Two settings:
- digits: the quickstart recipe (ResNet-20, digits 16x16, batch 64, 5 epochs, seed 0);
- cifar-smoke: CIFAR-10 python-pickle files written here in the real format (uniform random
  uint8 images, 5 x 64 training images, 64 test), ResNet-18, batch 32,
  3 epochs of 4 batches. This is the smoke data of the suite tests, not CIFAR.

Run: `python reports/fct_firing/measure.py` (CPU, one thread; about 1 min per digits run and
20 s per smoke run on a quiet core), or `... measure.py digits epoch 0.3 0.4` for a part.
The numbers are deterministic on a CPU for a given torch version (no timing).
"""

from __future__ import annotations

import hashlib
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from normbench.engine.loop import run_trial
from normbench.spec import Recipe, TrialSpec

TAUS = (0.15, 0.3, 0.4, 0.5, 0.6)


def write_cifar10(root: Path, per_batch: int = 64, n_test: int = 64, seed: int = 0) -> None:
    """cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}, pickled as the
    originals are (dict with 'data' (N, 3072) uint8 rows R|G|B and 'labels'). torchvision
    checks each file against the md5 of the real one, so its lists get these files' md5s."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def dump(name: str, n: int) -> None:
        obj = {
            "batch_label": name,
            "labels": [int(v) for v in rng.integers(0, 10, n)],
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    for k in range(1, 6):
        dump(f"data_batch_{k}", per_batch)
    dump("test_batch", n_test)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f, protocol=2)
    from torchvision.datasets import CIFAR10

    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    CIFAR10.train_list = [[n, md5(n)] for n, _ in CIFAR10.train_list]
    CIFAR10.test_list = [[n, md5(n)] for n, _ in CIFAR10.test_list]
    CIFAR10.meta = {**CIFAR10.meta, "md5": md5("batches.meta")}


def measure(spec: TrialSpec) -> tuple[float, int, int, float, float]:
    sims: list[float] = []
    last: dict = {}
    for record in run_trial(spec):
        if record["status"] != "ok":  # a diverged epoch carries no diagnostics
            print(f"<!-- diverged in epoch {record['epoch']}: {record.get('diverged_reason')} -->")
            break
        diag = record["diagnostics"]
        sims += [d["running_sim"] for d in diag.values() if d.get("running_sim") is not None]
        last = diag
    frozen = sum(d["frozen_steps"] for d in last.values())
    batch = sum(d["batch_steps"] for d in last.values())
    froze = sum(1 for d in last.values() if d["frozen_steps"] > 0)
    share = frozen / (frozen + batch) if frozen + batch else float("nan")
    return share, froze, len(last), min(sims), max(sims)


def main(argv: list[str]) -> None:
    """argv: [setting prefix ("digits" or "cifar"), decide ("step"/"epoch"), tau, ...];
    empty: every setting, both rules, every tau in TAUS."""
    only, decides, taus = None, ("step", "epoch"), TAUS
    if argv:
        only, decides, taus = argv[0], (argv[1],), tuple(float(t) for t in argv[2:]) or TAUS
    torch.set_num_threads(1)
    settings = []
    digits = TrialSpec(
        variant="ubn",
        backbone="resnet20",
        dataset="digits",
        epochs=5,
        batch_size=64,
        dataset_options={"image_size": 16, "val_fraction": 0.1},
        recipe=Recipe(lr=0.1, weight_decay=5e-4, warmup_epochs=1, schedule="cosine"),
        device="cpu",
        probe=False,
        num_threads=1,
    )
    settings.append(("digits, ResNet-20 (quickstart recipe)", digits))
    root = Path(tempfile.mkdtemp(prefix="fct_cifar_"))
    write_cifar10(root)
    for backbone in ("resnet18",):
        smoke = digits.replace(
            backbone=backbone,
            dataset="cifar10",
            epochs=3,
            batch_size=32,
            limit_batches=4,
            dataset_options={"root": str(root), "download": False, "val_fraction": 0.1},
            recipe=Recipe(lr=0.1, weight_decay=1e-4, schedule="cosine"),
        )
        settings.append((f"cifar-smoke, {backbone}", smoke))
    if not argv:
        print("| setting | decide | tau | frozen share | layers that froze | running sim range |")
        print("|---|---|---|---|---|---|")
    for label, base in settings:
        if only is not None and not label.startswith(only):
            continue
        for decide in decides:
            for tau in taus:
                spec = base.replace(variant_options={"tau": tau, "decide": decide})
                share, froze, n, lo, hi = measure(spec)
                print(
                    f"| {label} | {decide} | {tau} | {100 * share:.1f}% | {froze}/{n} "
                    f"| {lo:.3f}-{hi:.3f} |",
                    flush=True,
                )
    print(f"\ntorch {torch.__version__}, CPU, 1 thread", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
