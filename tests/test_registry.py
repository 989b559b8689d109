"""The registry and the public variant API: names, options, duplicates, the contract check."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from normbench import registry
from normbench.errors import DuplicateNameError, PluginError, UnknownNameError
from normbench.options import OptionDoor
from normbench.registry import BUILTIN, Registry
from normbench.variants_api import VARIANTS, check_variant_contract, variant_info


class ToyNorm(nn.Module):
    """Per-channel scale of the input: small, deterministic, contract-abiding."""

    paper = "Toy (test 2026)"
    batch_dependent = False

    def __init__(
        self, num_features: int, *, scale: float = 2.0, eps: float = 1e-5, momentum=0.1,
        device=None, dtype=None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.weight = nn.Parameter(torch.full((num_features,), scale, device=device, dtype=dtype))
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.reshape(1, -1, 1, 1)


class OtherNorm(ToyNorm):
    pass


class NoDefault(ToyNorm):
    def __init__(self, num_features: int, *, k: int, eps=1e-5, momentum=0.1, device=None,
                 dtype=None) -> None:  # fmt: skip
        super().__init__(num_features)


class WrongShape(ToyNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


class NoPaper(nn.Module):
    batch_dependent = False

    def __init__(self, num_features: int, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__()
        self.weight = self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _toy_registry() -> Registry:
    """A private registry whose only built-in is `toy` (no entry points in its group)."""
    return Registry(
        "variant",
        "normbench.tests.no_such_group",
        lambda: {"toy": ToyNorm},
        check=check_variant_contract,
        door=OptionDoor("variant", skip=1),
    )


def test_unknown_name_lists_choices_and_suggests_closest() -> None:
    reg = _toy_registry()
    reg.register("other", OtherNorm, source="file:/x.py")
    with pytest.raises(UnknownNameError) as info:
        reg.get("toi")
    message = str(info.value)
    assert "unknown variant 'toi'" in message
    assert "did you mean 'toy'?" in message
    assert "available: other, toy" in message


def test_unknown_name_without_close_match_has_no_suggestion() -> None:
    with pytest.raises(UnknownNameError) as info:
        _toy_registry().get("zzzzzz")
    assert "did you mean" not in str(info.value)
    assert "available: toy" in str(info.value)


def test_unknown_option_suggests_closest_and_lists_defaults() -> None:
    with pytest.raises(UnknownNameError) as info:
        _toy_registry().require_options("toy", {"scal": 3.0})
    message = str(info.value)
    assert "has no option 'scal'" in message
    assert "did you mean 'scale'?" in message
    assert "scale=2.0" in message and "eps=1e-05" in message


def test_names_are_case_insensitive() -> None:
    reg = _toy_registry()
    reg.register("MyNorm", OtherNorm, source="file:/x.py")
    assert reg.get("TOY").obj is ToyNorm
    assert reg.get("mynorm").obj is OtherNorm and reg.get("MYNORM").name == "mynorm"
    assert "ToY" in reg and reg.names() == ["mynorm", "toy"]


def test_duplicate_registration_raises_and_names_both_sources() -> None:
    reg = _toy_registry()
    with pytest.raises(DuplicateNameError) as info:
        reg.register("TOY", OtherNorm, source="file:/plugin.py")
    assert "already registered (from built-in)" in str(info.value)
    assert "file:/plugin.py" in str(info.value)
    assert reg.get("toy").obj is ToyNorm  # the first registration stays
    reg.register("toy", ToyNorm)  # the very same object again is not a conflict


def test_invalid_name_is_rejected() -> None:
    with pytest.raises(PluginError, match="must start with a letter"):
        _toy_registry().register("my norm", OtherNorm, source="file:/x.py")


def test_direct_registration_checks_the_contract_and_records_the_module() -> None:
    reg = _toy_registry()
    reg.register("other", OtherNorm)
    assert reg.get("other").source == f"module:{__name__}"
    with pytest.raises(PluginError, match="option 'k' must have a default"):
        reg.register("nodefault", NoDefault)
    assert "nodefault" not in reg


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (NoDefault, "option 'k' must have a default"),
        (WrongShape, "input (4, 8, 5, 5) float32 gave (4, 1, 5, 5)"),
        (NoPaper, "class attribute paper"),
        (lambda num_features: nn.Identity(), "torch.nn.Module subclass"),
    ],
)
def test_contract_violations_are_described(cls: type, expected: str) -> None:
    assert expected in (check_variant_contract(cls) or "")


def test_contract_check_passes_a_good_class_and_keeps_the_rng_stream() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert check_variant_contract(ToyNorm) is None
    assert torch.equal(torch.rand(3), expected)


def test_reset_forgets_entries_and_reloads_builtins() -> None:
    reg = _toy_registry()
    reg.register("other", OtherNorm, source="file:/x.py")
    reg._reset()
    assert reg.names() == ["toy"]


def test_failing_builtins_leave_the_registry_retryable() -> None:
    calls = []

    def builtins() -> dict[str, type]:
        calls.append(1)
        if len(calls) == 1:
            raise ImportError("half-written module")
        return {"toy": ToyNorm}

    reg = Registry("variant", "normbench.tests.no_such_group", builtins)
    with pytest.raises(ImportError):
        reg.names()
    assert reg.names() == ["toy"]  # no spurious duplicate from the first attempt


# -- the real built-ins -------------------------------------------------------------------
BUILTIN_NAMES = ("bn", "in", "gn", "iebn", "rbn", "bnet", "sabn", "bgn", "ghost_bn", "ubn",
                 "fourthings", "ccbn")  # fmt: skip


@pytest.fixture()
def builtins_available() -> None:
    pytest.importorskip("normbench.variants", reason="built-in variant modules not written yet")
    registry._reset_all()
    yield
    registry._reset_all()


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_create_norm_builds_each_builtin(builtins_available: None, name: str) -> None:
    from normbench import create_norm

    layer = create_norm(name.upper(), 16)
    x = torch.randn(4, 16, 6, 6)
    layer.train()
    assert layer(x).shape == x.shape
    assert VARIANTS.get(name).source == BUILTIN
    assert isinstance(type(layer).paper, str) and type(layer).paper
    assert isinstance(type(layer).batch_dependent, bool)
    assert variant_info(name)["source"] == BUILTIN
    # Built-ins meet the same contract a plugin is checked against.
    assert check_variant_contract(type(layer)) is None


def test_create_norm_unknown_option_on_builtin(builtins_available: None) -> None:
    from normbench import create_norm

    with pytest.raises(UnknownNameError, match="did you mean 'num_groups'"):
        create_norm("gn", 16, num_group=4)
    with pytest.raises(UnknownNameError, match="did you mean 'ghost_bn'"):
        create_norm("ghostbn", 16)


def test_builtins_are_all_registered(builtins_available: None) -> None:
    names = set(importlib.import_module("normbench").list_variants())
    assert set(BUILTIN_NAMES) <= names
