"""TrialSpec: JSON round trip, a stable id that ignores speed-only fields, validation."""

from __future__ import annotations

import json

import pytest

from normbench.spec import Recipe, SpecError, TrialSpec


def spec(**changes) -> TrialSpec:
    base = TrialSpec(
        variant="ubn", backbone="resnet20", dataset="synthetic", epochs=2,
        variant_options={"tau": 0.2}, recipe=Recipe(milestones=(1,), warmup_epochs=0.5),
        plugins=("a.py",),
    )  # fmt: skip
    return base.replace(**changes)


def test_round_trip_through_json() -> None:
    s = spec()
    back = TrialSpec.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s and back.trial_id == s.trial_id


def test_trial_id_ignores_speed_fields_only() -> None:
    s = spec()
    assert spec(num_threads=4, device="cuda", checkpoint_every=5).trial_id == s.trial_id
    assert spec(seed=1).trial_id != s.trial_id
    assert spec(recipe=Recipe(lr=0.2)).trial_id != s.trial_id


def test_validate_names_every_problem() -> None:
    with pytest.raises(SpecError) as exc:
        spec(epochs=0, batch_size=-1, placement="nowhere").validate()
    msg = str(exc.value)
    assert "epochs=0" in msg and "batch_size=-1" in msg and "placement='nowhere'" in msg
    assert spec().validate() == spec()


def test_trial_id_ignores_where_data_and_plugins_live() -> None:
    """Moving the data set or the suite folder keeps finished trials recognisable."""
    base = TrialSpec(variant="bn", backbone="resnet20", dataset="cifar10", epochs=1)
    a = base.replace(dataset_options={"root": "/data/a", "download": False, "image_size": 32})
    b = base.replace(dataset_options={"root": "/mnt/b", "download": True, "image_size": 32})
    c = base.replace(dataset_options={"root": "/data/a", "image_size": 16})
    assert a.trial_id == b.trial_id
    assert a.trial_id != c.trial_id
    p1 = base.replace(plugins=("/home/x/suites/my_norm.py",))
    p2 = base.replace(plugins=("/shared/suites/my_norm.py",))
    assert p1.trial_id == p2.trial_id != base.trial_id


def test_every_field_has_one_role_and_the_lists_derive_from_it() -> None:
    from normbench.spec import (
        ENVIRONMENT,
        IDENTITY,
        LOCATION,
        ROLES,
        declared,
        family_hash,
        fields_with,
        flat_fields,
        identity,
    )
    from normbench.suite.schema import TrainModel

    assert all(d.param.role in ROLES and d.param.help for d in flat_fields())
    assert fields_with(ENVIRONMENT) == ("device", "deterministic", "num_threads", "parallel")
    assert fields_with(LOCATION) == ()  # locations live inside plugins and dataset_options
    assert "num_threads" not in identity(spec().to_dict())
    assert set(fields_with(IDENTITY)) >= {"variant", "recipe", "epochs", "amp", "plugins"}
    # A run moved to another machine keeps its family (the store's compatibility check).
    assert family_hash(spec().to_dict()) == family_hash(
        spec(num_threads=8, device="cuda").to_dict()
    )
    # The suite's `train:` keys are the declared suite keys, with the declared defaults.
    suite_keys = {d.name: d for d in flat_fields() if d.param.suite}
    assert set(TrainModel.model_fields) == {*suite_keys, "lr_reference_batch"}
    for name, d in suite_keys.items():
        field = TrainModel.model_fields[name]
        assert d.required == field.is_required()
        if not d.required:
            default = field.get_default(call_default_factory=True)
            assert default == (list(d.default) if isinstance(d.default, tuple) else d.default)
    assert declared(TrialSpec)[0].name == "variant"


def test_spec_and_recipe_validate_on_construction() -> None:
    with pytest.raises(SpecError, match="recipe.lr must be a number > 0"):
        Recipe(lr=0)
    with pytest.raises(SpecError, match="milestones must be increasing, each an integer >= 1"):
        Recipe(milestones=(3, 2))
    with pytest.raises(SpecError, match="epochs=0"):
        TrialSpec(variant="bn", backbone="resnet20", dataset="digits", epochs=0)
