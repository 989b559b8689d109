"""Final-epoch test SA and PGD-10/PGD-20 RA through each branch, mean over seeds, per layer,
from a run directory's records (the leaderboard shows the adversarial branch's and clean SA):

    python reports/sabn_adversarial/branches.py reports/sabn_adversarial/run
"""

from __future__ import annotations

import sys
from pathlib import Path

from normbench.results import load_epochs, load_results

KEYS = [f"test_{b}_{m}" for b in ("clean", "adv") for m in ("sa", "pgd10_ra", "pgd20_ra")]


def main(run: Path) -> None:
    trials = load_results(run).set_index("trial_id")
    epochs = load_epochs(run)
    final = epochs[epochs["epoch"] == epochs.groupby("trial_id")["epoch"].transform("max")]
    final = final.join(trials["variant"], on="trial_id")
    table = final.groupby("variant")[KEYS].mean().round(2)
    header = "| layer | " + " | ".join(k.removeprefix("test_") for k in KEYS) + " |"
    print(header, "|---" * (len(KEYS) + 1) + "|", sep="\n")
    for variant, row in table.iterrows():
        print(f"| {variant} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
