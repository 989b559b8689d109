"""Computation revisions (normbench.contract.Revision, normbench.engine.revisions): what a
component declares, when a trial id includes it, and which stored trials a suite's trials
at new revisions supersede (normbench.results.revisions). The user path (a rerun into the
same run directory, its report) is tests/suite/test_revision_rerun.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normbench.contract import Revision, revisions_of
from normbench.engine.revisions import notes, revisions, stamp
from normbench.errors import PluginError
from normbench.models import BACKBONES
from normbench.registry import Registry, load_plugin
from normbench.results.revisions import superseded
from normbench.spec import Recipe, TrialSpec, unrevised_id
from normbench.variants_api import VARIANTS

# Ids computed with the code of main before revisions existed (commit cfa07d7): a spec whose
# components are all at revision 1 keeps exactly these ids, so stored runs still resume.
PINNED = [
    ("8a0a2db04d05", dict(variant="bn", backbone="resnet20", dataset="digits", epochs=1)),
    (
        "8e000748b15e",
        dict(variant="frn", backbone="vgg11", dataset="cifar10", epochs=160,
             variant_options={"apply_act": False}),
    ),
    (
        "06075dd21598",
        dict(variant="gn", backbone="imagenet_resnet18", dataset="imagenet", epochs=90,
             variant_options={"num_groups": 32}, batch_size=32, recipe=Recipe(lr=0.0125)),
    ),
]  # fmt: skip
# a trial whose backbone (and layer) changed since: its id then
EVONORM_B0_RESNET20 = ("767cd0c2970c", dict(
    variant="evonorm_b0", backbone="resnet20", dataset="digits", epochs=5, seed=2
))  # fmt: skip


@pytest.mark.parametrize(("pinned", "fields"), PINNED)
def test_an_id_at_revision_1_is_unchanged(pinned: str, fields: dict) -> None:
    spec = TrialSpec(**fields)
    assert stamp(spec) == spec and spec.revisions == {}  # revision 1 everywhere: nothing added
    assert spec.trial_id == pinned == unrevised_id(spec.to_dict())
    assert revisions(spec) == {"variant": 1, "backbone": 1, "dataset": 1, "task": 1}


def test_a_revised_component_gives_a_new_id_of_the_same_trial() -> None:
    pinned, fields = EVONORM_B0_RESNET20
    spec = TrialSpec(**fields)
    assert spec.trial_id == pinned  # as built by hand: the id the old code gave it
    now = stamp(spec)
    assert now.revisions == {"backbone": 2}
    assert now.trial_id != pinned and unrevised_id(now.to_dict()) == pinned
    assert notes(now)["backbone"] == (
        "evonorm_b0 in resnet20: revision 2 (no ReLU after normalization-activation layers)"
    )


@pytest.mark.parametrize(
    ("variant", "options", "backbone", "expected"),
    [
        ("evonorm_s0", {}, "resnet20", 2),  # the class says norm_activation
        ("frn", {}, "preact_resnet18", 2),  # FRN with its TLU: the built layer says so
        ("frn", {"apply_act": False}, "preact_resnet18", 1),  # plain FRN: no change
        ("bn", {}, "vgg16", 1),
        ("evonorm_s0", {}, "imagenet_resnet18", 2),  # torchvision's blocks skip their ReLU
        ("bn", {}, "imagenet_resnet18", 1),
        ("frn", {}, "nas201", 2),
        ("evonorm_b0", {}, "convnext_atto", 1),  # no activation after its norms
    ],
)
def test_a_backbone_change_applies_where_its_when_holds(
    variant: str, options: dict, backbone: str, expected: int
) -> None:
    spec = TrialSpec(variant=variant, backbone=backbone, dataset="digits", epochs=1,
                     variant_options=options)  # fmt: skip
    assert revisions(spec)["backbone"] == expected


def test_every_backbone_that_drops_the_relu_is_at_revision_2() -> None:
    """The backbones whose norm-activation trials changed (git log -S activation_after) are
    exactly those whose built model has no ReLU after an EvoNorm-S0 (checked on the model)."""
    from normbench.models import create_backbone

    evo = VARIANTS.get("evonorm_s0").obj
    for name in ("resnet20", "resnet18", "preact_resnet18", "vgg11", "inceptionv4"):
        with torch.device("meta"):
            model = create_backbone(name, 10, evo)
        relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
        assert len(relus) < sum(isinstance(m, evo) for m in model.modules()), name
        assert [r.number for r in BACKBONES.revisions(name)] == [2], name


def test_declarations_a_plugin_may_write() -> None:
    class Told:
        revision = {2: "epsilon inside the root", 3: "fp32 statistics"}

    assert revisions_of(Told) == (
        Revision(2, "epsilon inside the root"),
        Revision(3, "fp32 statistics"),
    )
    assert revisions_of(object) == () and revisions_of(type("One", (), {"revision": 1})) == ()


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (0, "revision must be"), ("2", "revision must be"), (True, "revision must be"),
        (2.0, "revision must be"), ((Revision(3, "a"), Revision(2, "b")), "must increase"),
        # a change says what changed, in one line (a bare number says nothing)
        ({2: ""}, "revision 2 needs a one-line reason"), ({2: "  "}, "needs a one-line"),
        ({2: "a", 3: "two\nlines"}, "revision 3 needs a one-line reason"),
        (2, "revision 2 needs a one-line reason"),
        # the changes are numbered from 2 without a gap
        ({3: "fp32 statistics"}, r"must run 2, 3, \.\.\. without a gap, but got revision="),
        ({2: "a", 4: "b"}, "without a gap"),
    ],
)  # fmt: skip
def test_a_malformed_declaration_is_refused_at_registration(bad: object, why: str) -> None:
    reg = Registry("gadget", "normbench.test_gadgets", dict)
    with pytest.raises(PluginError, match=rf"^gadget 'thing' \(from file:a_test.py\): .*{why}"):
        reg.register("thing", type("Thing", (), {"revision": bad}), source="file:a_test.py")
    assert "thing" not in reg


def test_a_plugin_layer_with_a_blank_reason_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the user's path: `normbench variants --plugin` exits 2 with one line."""
    from normbench.cli import main

    plugin = tmp_path / "blank_norm.py"
    plugin.write_text(
        "from torch import nn\nfrom normbench import register_variant\n\n"
        "@register_variant('blank_norm')\nclass BlankNorm(nn.BatchNorm2d):\n"
        "    paper = 'none'\n    batch_dependent = True\n    revision = {2: ''}\n"
    )
    with pytest.raises(SystemExit) as info:
        main(["variants", "--plugin", str(plugin)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "blank_norm" not in VARIANTS, err
    assert len(err.splitlines()) == 1 and "'blank_norm'" in err and str(plugin) in err, err
    assert "revision 2 needs a one-line reason saying what changed" in err, err


def test_a_plugin_file_declares_a_layer_revision(tmp_path: Path) -> None:
    plugin = tmp_path / "revised_norm.py"
    plugin.write_text(
        "from torch import nn\nfrom normbench import register_variant\n\n"
        "@register_variant('revised_norm')\nclass RevisedNorm(nn.BatchNorm2d):\n"
        "    paper = 'none'\n    batch_dependent = True\n"
        "    revision = {2: 'affine after the statistics'}\n"
    )
    try:
        load_plugin(plugin)
        spec = stamp(TrialSpec(variant="revised_norm", backbone="resnet20", dataset="digits",
                               epochs=1, plugins=(str(plugin),)))  # fmt: skip
        assert spec.revisions == {"variant": 2}
        assert notes(spec) == {"variant": "revised_norm: revision 2 (affine after the statistics)"}
    finally:
        VARIANTS.unregister("revised_norm")


def test_superseded_names_the_stored_trials_of_another_revision() -> None:
    old = TrialSpec(variant="evonorm_b0", backbone="resnet20", dataset="digits", epochs=1)
    bn = TrialSpec(variant="bn", backbone="resnet20", dataset="digits", epochs=1)
    longer = old.replace(epochs=2)  # another trial (length) of the family: never superseded
    new = stamp(old)
    stored = {s.trial_id: s.to_dict() for s in (old, bn, longer)} | {"abcdef012345": None}
    found = superseded(stored, [new.to_dict(), bn.to_dict()])
    assert list(found) == [old.trial_id]
    assert found[old.trial_id].by == new.trial_id
    assert found[old.trial_id].was == {"backbone": 1}
    assert found[old.trial_id].now == {"backbone": 2}
    assert superseded({new.trial_id: new.to_dict()}, [new.to_dict()]) == {}


def test_a_stored_trial_of_newer_code_is_told_apart_from_an_older_one() -> None:
    """After a downgrade the stored trial is at a newer revision than this code's: not
    reused all the same, but named as computed by newer code, never as older."""
    from normbench.results.revisions import left_out_line

    old = TrialSpec(variant="evonorm_b0", backbone="resnet20", dataset="digits", epochs=1)
    new = old.replace(revisions={"backbone": 2})
    (down,) = superseded({new.trial_id: new.to_dict()}, [old.to_dict()]).values()
    (up,) = superseded({old.trial_id: old.to_dict()}, [new.to_dict()]).values()
    assert (down.by, down.was, down.now) == (old.trial_id, {"backbone": 2}, {"backbone": 1})
    assert down.newer and not up.newer
    specs = {new.trial_id: new.to_dict(), old.trial_id: old.to_dict()}
    both = left_out_line({down.trial_id: down, up.trial_id: up}, specs)
    assert both == (
        "1 trial computed by an older revision of a component (backbone evonorm_b0 in "
        "resnet20: 1 at revision 1, now 2); the suite now runs it at the new one; its records "
        "stay in the run directory; 1 trial computed by a newer revision of a component than "
        "this code (backbone evonorm_b0 in resnet20: 1 at revision 2, now 1); this code runs "
        "it at its own; its records stay in the run directory"
    )


SEARCH = """
version: 1
name: revsearch
dataset: {name: synthetic, image_size: 16, n_train: 64, n_test: 16, num_classes: 4}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [evonorm_s0]
batch_sizes: [16]
seeds: [0]
train: {epochs: 1, probe: false, device: cpu}
resources: {cpus: 1, gpus: 0}
search:
  metric: val_top1
  mode: max
  num_samples: 2
  space:
    recipe.lr: {type: float, low: 0.01, high: 0.2, log: true}
"""


def test_a_search_does_not_go_on_across_a_revision(tmp_path: Path) -> None:
    """Its study would count the samples of the old code as done: refused, nothing written."""
    import json

    from normbench.errors import RunDirError
    from normbench.suite.loader import load_suite
    from normbench.suite.rundir import check_run_dir

    (tmp_path / "s.yaml").write_text(SEARCH)
    suite = load_suite(tmp_path / "s.yaml")
    assert suite.trials()[0].spec.revisions == {"backbone": 2}
    old = suite.to_json()
    for t in old["trials"]:  # as the code before the change stored it
        t["spec"]["revisions"] = {}
        t["trial_id"] = unrevised_id(t["spec"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "suite.resolved.json").write_text(json.dumps(old))
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RunDirError, match=r"search computed by another revision of the code "
                       r"\(backbone revision 1 then, 2 now\)"):  # fmt: skip
        check_run_dir(run, suite)
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_sampled_layer_option_gets_the_revisions_it_then_has() -> None:
    """A search that samples FRN's apply_act samples two computations: the plain FRN is at
    revision 1 on resnet20, FRN with its TLU at 2; a sampled lr keeps the base's."""
    from normbench.suite.matrix import searched_spec

    base = stamp(TrialSpec(variant="frn", backbone="resnet20", dataset="digits", epochs=1))
    assert base.revisions == {"backbone": 2}
    assert searched_spec(base, {"variant_options.apply_act": False}).revisions == {}
    assert searched_spec(base, {"recipe.lr": 0.01}).revisions == {"backbone": 2}


def test_a_stored_trial_of_an_older_revision_is_not_rebuilt(tmp_path: Path) -> None:
    """`normbench evaluate` and `normbench train --suite RUN_DIR` read a spec back: one
    computed by other code is refused in one line instead of run through the new code."""
    from normbench.engine.stored import spec_from_run
    from normbench.errors import UserError

    old = TrialSpec(variant="evonorm_s0", backbone="resnet20", dataset="digits", epochs=1)
    with pytest.raises(UserError, match=(
        r"computed by other code \(evonorm_s0 in resnet20: revision 2 \(no ReLU after "
        r"normalization-activation layers\) now, revision 1 when it ran\)"
    )):  # fmt: skip
        spec_from_run(old.to_dict(), (), trial_id=old.trial_id, where=tmp_path)
    now = stamp(old)
    assert spec_from_run(now.to_dict(), (), trial_id=now.trial_id, where=tmp_path) == now


class _NeedsAnAccelerator(torch.nn.Module):
    """A layer whose constructor fails off an accelerator (as one that needs CUDA would)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        raise RuntimeError("no CUDA device")


class _ReadsAValue(torch.nn.Module):
    """A layer whose constructor reads a tensor's value (fails on the meta device) and sets
    `norm_activation` on its instances only."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(num_features))
        self.norm_activation = bool(self.scale.sum().item() > 0)


def test_the_norm_flag_never_depends_on_the_machine() -> None:
    """`when="norm_activation"` asks the layer: a layer that builds nowhere here counts as not
    having it (a CUDA-only constructor must not give another id on a GPU machine), and one
    that fails only on the meta device is asked after a CPU build."""
    from normbench.engine.revisions import _norm_flag

    assert _norm_flag(_NeedsAnAccelerator, (), "resnet20", (), "norm_activation") is False
    assert _norm_flag(_ReadsAValue, (), "resnet20", (), "norm_activation") is True
