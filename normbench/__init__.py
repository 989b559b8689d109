"""normbench: compare normalization layers in image classifiers.

The package imports lazily (PEP 562): `import normbench.reports` never pulls in torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "create_norm": "normbench.variants_api",
    "list_variants": "normbench.variants_api",
    "register_variant": "normbench.variants_api",
    "norm_layer": "normbench.variants_api",
    "variant_info": "normbench.variants_api",
    "load_plugin": "normbench.registry",
    "register_backbone": "normbench.models",
    "create_backbone": "normbench.models",
    "register_dataset": "normbench.data",
    "sabn_index": "normbench.variants.sabn",
    "branch_index": "normbench.variants._branch",
    "TrialSpec": "normbench.spec",
    "run_trial": "normbench.engine.loop",
    "load_results": "normbench.results.frames",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'normbench' has no attribute {name!r}")


class _CheckoutVariantsFinder(importlib.abc.MetaPathFinder):
    """Finds `normbench.variants` in the top-level `variants/` folder of a source checkout.

    An installed normbench holds `normbench/variants/` (pyproject.toml maps the folder in), but
    Python run from the repository root imports the checkout's `normbench/` first (the current
    directory leads `sys.path`), where that folder does not exist. This finder, consulted after
    the standard ones, maps the one name the way the installer does: same files, same package.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "normbench.variants":
            return None
        return importlib.util.spec_from_file_location(
            fullname, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)]
        )


def _map_checkout_variants() -> None:
    here = Path(__file__).resolve().parent
    checkout_variants = here.parent / "variants"
    if (here / "variants").is_dir() or not (checkout_variants / "__init__.py").is_file():
        return  # installed (or editable, whose own finder maps the folder)
    if not any(isinstance(f, _CheckoutVariantsFinder) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutVariantsFinder(checkout_variants))


_map_checkout_variants()
