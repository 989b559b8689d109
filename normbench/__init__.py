"""normbench: compare normalization layers in image classifiers.

The package imports lazily (PEP 562): `import normbench.reports` never pulls in torch.
"""

from __future__ import annotations

import importlib
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
    "TrialSpec": "normbench.engine.spec",
    "run_trial": "normbench.engine.loop",
    "load_results": "normbench.results.store",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'normbench' has no attribute {name!r}")
