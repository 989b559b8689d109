"""Trial ids are pinned: a stored run resumes only while its trials keep their ids.

The id hashes `normbench.spec.identity(spec)`. These goldens fail when a change to the trial
declaration (a field added, renamed, re-defaulted, or its role changed) changes the id of a
stored trial. **To add a field that changes results** without changing any old id, declare it
in `normbench/spec.py` with `new=True`: it is left out of the id while it holds its default,
so every trial that existed before keeps its id (as `devices` and `stats_scope` were added).
A field that only says where or how fast a trial runs gets `role=ENVIRONMENT` (or location,
bookkeeping) and never enters the id. Never edit the ids below to make this test pass: a
changed id is a run directory that silently stops resuming. (A change to what a layer,
backbone or task computes is the one that should change ids: it bumps the component's
computation revision, docs/reproducibility.md#computation-revisions, and the trials it
touches get new ids; tests/test_revisions.py pins that the others keep theirs.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normbench.spec import TrialSpec, declared, identity
from normbench.suite.loader import load_suite

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_RUN = ROOT / "reports" / "quickstart" / "run"

# The first trial of each shipped suite, as committed when the ids were pinned.
FIRST_TRIAL = {
    "batch_size_ablation.yaml": "6e59e3cdda76",
    "batch_size_ablation_cifar100.yaml": "125f2a672fe1",
    "batch_size_bn_vs_ubn.yaml": "a93d2b825897",
    "bgn_small_batch.yaml": "cad9d06110ab",
    "cifar100_table3.yaml": "3709f7594987",
    "cifar10_table4.yaml": "a565a061b969",
    "coco_table5_faster_rcnn.yaml": "28de30157080",
    "coco_table6_mask_rcnn.yaml": "8f9f87911ac8",
    "detection_digits.yaml": "0a1aff111210",
    "fct_search.yaml": "0230f3567d6d",
    "fourthings.yaml": "60153dd7af94",
    "imagenet_table2.yaml": "4cca4da3d357",
    "imagenet_table2_resnet50.yaml": "87ff6733c60e",
    "modern_norms.yaml": "ffd6a542d879",
    "modern_norms_digits.yaml": "831a4f345bcd",  # the quickstart's BN trial: the same spec
    "quickstart.yaml": "831a4f345bcd",
    "small_batch.yaml": "e359c0c9a4db",
    "ubn_ablation.yaml": "5bebaa1f41e5",
    "ubn_fct_values.yaml": "78286660757c",
    "ubn_time_to_bn.yaml": "6a7f8be4a853",
}


def _stored() -> dict[str, dict]:
    lines = [json.loads(x) for x in (QUICKSTART_RUN / "trials.jsonl").read_text().splitlines()]
    return {line["trial_id"]: line["spec"] for line in lines}


def test_the_committed_quickstart_keeps_its_33_ids() -> None:
    stored = _stored()
    assert len(stored) == 33
    # each stored spec still hashes to the id it was stored under ...
    assert {TrialSpec.from_dict(spec).trial_id for spec in stored.values()} == set(stored)
    # ... and the suite file still expands to exactly those trials
    assert {t.trial_id for t in load_suite(ROOT / "suites" / "quickstart.yaml").trials()} == set(
        stored
    )


@pytest.mark.parametrize("name", sorted(FIRST_TRIAL))
def test_each_shipped_suite_keeps_its_first_id(name: str) -> None:
    assert load_suite(ROOT / "suites" / name).trials()[0].trial_id == FIRST_TRIAL[name]


def test_new_fields_stay_out_of_the_id_at_their_default() -> None:
    """A field declared `new=True` changes the id only when set; the committed quickstart's
    stored specs predate every such field or hold it at its default."""
    spec = TrialSpec.from_dict(next(iter(_stored().values())))
    new = [d for d in declared(TrialSpec) if d.param.new]
    assert {d.name for d in new} >= {"devices", "stats_scope"}
    assert not {d.name for d in new} & set(identity(spec.to_dict()))
    assert spec.replace(devices=2).trial_id != spec.trial_id
