"""Plugins: files named with --plugin and entry points of installed packages.

A good plugin registers through the same call as the built-ins and records its source; a
broken one is reported by name (exit 2 with one line at the CLI) and never takes the
built-ins down.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from normbench import registry
from normbench.cli import main
from normbench.errors import PluginError
from normbench.registry import BUILTIN, load_plugin
from normbench.variants_api import VARIANTS, create_norm, list_variants

GOOD_PLUGIN = """
import torch
from torch import nn

from normbench import register_variant


@register_variant("Scaled_BN")
class ScaledBN(nn.BatchNorm2d):
    paper = "A test plugin (nowhere 2026)"
    batch_dependent = True

    def __init__(self, num_features, *, scale=2.0, eps=1e-5, momentum=0.1, device=None,
                 dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.scale = scale

    def forward(self, x):
        return helper(super().forward(x), self.scale)


def helper(y, scale):  # defined after the class: the contract check must wait for it
    return y * scale
"""


@pytest.fixture()
def fresh() -> Iterator[None]:
    """Empty registries before and after; built-ins reload lazily on first use."""
    registry._reset_all()
    yield
    registry._reset_all()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def _bn_reference(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Training-mode batch norm written from its formula (biased variance over N, H, W)."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def test_plugin_file_through_the_cli_records_its_source(
    fresh: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, "my_plugin.py", GOOD_PLUGIN)
    code, out, err = _run(["variants", "--plugin", str(path), "--json"], capsys)
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)}
    row = rows["scaled_bn"]
    assert row["source"] == f"file:{path.resolve()}"
    assert row["options"] == {"scale": 2.0, "eps": 1e-5, "momentum": 0.1}
    assert row["params_per_channel"] == 2 and row["batch_dependent"] is True
    assert rows["bn"]["source"] == BUILTIN


def test_plugin_variant_is_usable_after_loading(fresh: None, tmp_path: Path) -> None:
    path = _write(tmp_path, "my_plugin.py", GOOD_PLUGIN)
    assert load_plugin(path) == ["variant:scaled_bn"]
    assert load_plugin(path) == ["variant:scaled_bn"]  # a second load is a no-op
    layer = create_norm("SCALED_BN", 3, scale=3.0)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(layer(x), 3.0 * _bn_reference(x))


def test_an_edited_plugin_file_is_loaded_again_without_its_old_names(
    fresh: None, tmp_path: Path
) -> None:
    """A long-lived process (a notebook, a cluster's Ray worker) that loads a plugin file again
    after it was edited runs the new code: the old content's names are gone, the new ones are
    registered, and the same content again is still a no-op."""
    path = _write(tmp_path, "my_plugin.py", GOOD_PLUGIN)
    assert load_plugin(path) == ["variant:scaled_bn"]
    edited = GOOD_PLUGIN.replace('"Scaled_BN"', '"Tripled_BN"').replace("y * scale", "3 * y")
    path.write_text(textwrap.dedent(edited))
    assert load_plugin(path) == ["variant:tripled_bn"]
    assert "scaled_bn" not in list_variants() and "tripled_bn" in list_variants()
    assert load_plugin(path) == ["variant:tripled_bn"]
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(create_norm("tripled_bn", 3)(x), 3.0 * _bn_reference(x))


def test_loading_a_plugin_keeps_the_seeded_random_stream(fresh: None, tmp_path: Path) -> None:
    path = _write(tmp_path, "my_plugin.py", GOOD_PLUGIN)
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    load_plugin(path)  # runs the contract check's forward passes
    assert torch.equal(torch.rand(4), expected)


BROKEN_PLUGINS = {
    "syntax": ("def broken(:\n    pass\n", "SyntaxError"),
    "import": ("import normbench_no_such_module_xyz\n", "ModuleNotFoundError"),
    "no_default": (
        GOOD_PLUGIN.replace("scale=2.0", "scale"),
        "option 'scale' must have a default",
    ),
    "wrong_shape": (
        GOOD_PLUGIN.replace("return y * scale", "return (y * scale)[:, :1]"),
        "forward must return a tensor of the input's shape",
    ),
    "duplicate": (
        GOOD_PLUGIN.replace('"Scaled_BN"', '"bn"'),
        "variant 'bn' is already registered (from built-in)",
    ),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_PLUGINS))
def test_broken_plugin_file_exits_2_with_one_line(
    fresh: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    text, reason = BROKEN_PLUGINS[kind]
    # A good variant registered before the failure must be rolled back with the file.
    good = GOOD_PLUGIN.replace('"Scaled_BN"', '"early_ok"').replace("ScaledBN", "EarlyOk")
    path = _write(tmp_path, f"broken_{kind}.py", good + "\n" + text)
    code, out, err = _run(["variants", "--plugin", str(path), "--json"], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("normbench: error: plugin file")
    assert str(path.resolve()) in lines[0] and reason in lines[0]
    # The built-ins still work, and nothing of the broken file stays registered.
    assert "early_ok" not in list_variants() and "scaled_bn" not in list_variants()
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(create_norm("bn", 3)(x), _bn_reference(x))
    with pytest.raises(PluginError, match="does not exist"):
        load_plugin(tmp_path / "missing.py")


# -- entry points -------------------------------------------------------------------------
EP_MODULE = """
import torch
from torch import nn

from normbench import register_variant


class EpNorm(nn.Module):
    paper = "Entry-point plugin (nowhere 2026)"
    batch_dependent = False

    def __init__(self, num_features, *, shift=1.0, eps=1e-5, momentum=0.1, device=None,
                 dtype=None):
        super().__init__()
        self.weight = None
        self.bias = nn.Parameter(torch.full((num_features,), shift))

    def forward(self, x):
        return x + self.bias.reshape(1, -1, 1, 1)


@register_variant("ep_decorated")
class Decorated(EpNorm):
    pass


class WrongShape(EpNorm):
    def forward(self, x):
        return x.flatten(1)
"""


def _install_distribution(tmp_path: Path, module: str, entry_points: str) -> None:
    """A real installed distribution: module + *.dist-info with METADATA and entry points."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(EP_MODULE))
    info = tmp_path / f"{module}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[normbench.variants]\n{entry_points}\n")


def test_entry_point_plugin_is_registered_with_package_source(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_distribution(tmp_path, "nb_ep_good", "epnorm = nb_ep_good:EpNorm\nwhole = nb_ep_good")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._reset_all()
    names = list_variants()
    assert {"epnorm", "ep_decorated", "bn"} <= set(names)
    assert VARIANTS.get("EPNORM").source == "package nb_ep_good 1.2.3"
    assert VARIANTS.get("ep_decorated").source == "package nb_ep_good 1.2.3"
    assert VARIANTS.get("bn").source == BUILTIN
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(create_norm("epnorm", 3, shift=0.5)(x), x + 0.5)


def test_broken_entry_points_are_reported_and_builtins_still_load(
    fresh: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _install_distribution(
        tmp_path,
        "nb_ep_mixed",
        "missing = nb_ep_no_such_module:Nope\nbadshape = nb_ep_mixed:WrongShape\n"
        "fine = nb_ep_mixed:EpNorm",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._reset_all()
    broken = VARIANTS.broken()
    assert set(broken) == {"missing", "badshape"}
    assert "'missing' (package nb_ep_mixed 1.2.3" in broken["missing"]
    assert "ModuleNotFoundError" in broken["missing"]
    assert "shape" in broken["badshape"]
    assert {"bn", "fine"} <= set(list_variants()) and "badshape" not in list_variants()
    with pytest.raises(PluginError, match="'badshape'"):
        create_norm("badshape", 3)
    code, out, err = _run(["variants", "--json"], capsys)
    assert code == 0
    assert {"bn", "fine"} <= {row["name"] for row in json.loads(out)}
    assert err.count("normbench: warning: variant plugin") == 2 and "'missing'" in err


def test_entry_point_that_exits_on_import_is_reported_and_normbench_keeps_running(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15: a plugin calling sys.exit() on import made normbench exit without a word."""
    _install_distribution(tmp_path, "nb_ep_exits", "exits = nb_ep_exits_mod:Thing\n")
    (tmp_path / "nb_ep_exits_mod.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._reset_all()
    broken = VARIANTS.broken()
    assert "it called sys.exit(3)" in broken["exits"] and "nb_ep_exits 1.2.3" in broken["exits"]
    assert "bn" in list_variants()
    with pytest.raises(PluginError, match="it called sys.exit"):
        create_norm("exits", 3)


def test_option_hook_is_the_same_door_for_create_norm_and_suites(fresh: None) -> None:
    """The registry calls a layer's check_options hook with what the caller knows: without a
    batch size (create_norm) Ghost BN's rule cannot apply; with one it names the option."""
    assert create_norm("ghost_bn", 4, ghost_batch_size=24).ghost_batch_size == 24
    problems = VARIANTS.check_options("ghost_bn", {"ghost_batch_size": 24}, batch_size=64)
    assert [(p.option, p.message) for p in problems] == [
        ("ghost_batch_size", "variant 'ghost_bn': ghost_batch_size=24 must divide batch size 64")
    ]
    assert VARIANTS.check_options("ghost_bn", {"ghost_batch_size": 16}, batch_size=64) == []
    widths = frozenset({16, 32, 64})
    (gn,) = VARIANTS.check_options("gn", {"num_groups": 12}, widths=widths)
    assert gn.option == "num_groups" and "[16, 32, 64]" in gn.message
    assert VARIANTS.check_options("gn", {}, widths=widths) == []  # the default 32 may fall back


WIDTH_LIMITED = """
import torch
from torch import nn

from normbench import register_variant


@register_variant("octet_norm")
class OctetNorm(nn.Module):
    \"\"\"Normalizes groups of 8 channels: builds at any width, runs only at multiples of 8.\"\"\"

    paper = "A test plugin (nowhere 2026)"
    batch_dependent = False

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))

    def forward(self, x):
        n, c, h, w = x.shape
        g = x.reshape(n, c // 8, 8, h, w)  # fails unless c is a multiple of 8
        y = (g - g.mean((2, 3, 4), keepdim=True)) / (g.var((2, 3, 4), keepdim=True) + 1e-5).sqrt()
        return y.reshape(n, c, h, w) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
"""


def test_a_plugin_layer_that_fails_at_one_width_is_refused_before_ray(
    fresh: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Registration runs the layer at 8 channels (it passes); suite validation runs it at
    every width the backbone gives it (ResNet-20 at width 4: 4, 8, 16) and refuses the suite
    at 4, in one line, with nothing written and before Ray starts."""
    _write(tmp_path, "octet.py", WIDTH_LIMITED)
    suite = _write(tmp_path, "s.yaml", """
        version: 1
        name: octet
        plugins: [octet.py]
        dataset: {name: synthetic, image_size: 8, n_train: 64, n_test: 16, num_classes: 4}
        backbones: [{name: resnet20, options: {width: 4}}]
        variants: [octet_norm]
        batch_sizes: [16]
        train: {epochs: 1, device: cpu}
    """)  # fmt: skip
    run = tmp_path / "run"
    for dry in ([], ["--dry-run"]):
        code, _, err = _run(["run", str(suite), "--output", str(run), *dry], capsys)
        (line,) = err.splitlines()
        assert code == 2 and "variant 'octet_norm' fails at a 4-channel layer" in line
        assert "(16, 4, 4, 4) batch" in line and "invalid for input of size" in line
        assert not run.exists()
    assert create_norm("octet_norm", 8)(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3)


def test_a_plugin_folder_is_named_as_a_folder(tmp_path: Path, capsys) -> None:
    code, _, err = _run(["variants", "--plugin", str(tmp_path)], capsys)
    assert code == 2 and err.strip() == (
        f"normbench: error: plugin file {str(tmp_path)!r} is a directory, not a Python file"
    )
