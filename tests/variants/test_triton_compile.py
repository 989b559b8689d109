"""The CUDA kernels through Triton's compiler, without a GPU: the interpreter
(tests/variants/test_triton.py) runs a kernel as Python, so it accepts what the code generator
may reject (a call to a plain function, a tuple argument). Here every kernel, for every layer
kind, is lowered to Triton IR for an sm_80 target and through the TTIR and TTGIR passes,
where its `triton.jit` helpers (`_triton_tiles`) must be inlined: no call is left.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

import pytest

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("the interpreter's kernels are not compiled", allow_module_level=True)

from triton._C.libtriton import ir  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.compiler.compiler import make_backend  # noqa: E402

from normbench.variants import _triton_elementwise  # noqa: E402

FULL_SIZE = {"x_ptr", "y_ptr", "g_ptr", "dx_ptr"}  # bf16 activations; statistics fp32
META = {"BLOCK_C": 4, "BLOCK_HW": 64, "HAS_G": True, "WRITE_DX": True}
PER_INSTANCE = ("moments", "affine", "grad_sums", "input_grad", "weighted_sum")
CASES = [("_triton", name, {}) for name in PER_INSTANCE]
CASES += [
    ("_triton_elementwise", name, {"KIND": kind})
    for name in ("pointwise_forward", "pointwise_grad_sums", "pointwise_input_grad")
    for kind in sorted(_triton_elementwise.COEFFICIENTS)
    if (name, kind) != ("pointwise_input_grad", _triton_elementwise.DYT)  # DyT: grad_sums
]


def _signature(kernel: Any, meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Triton's argument types as a launch on bf16 activations would specialise them."""
    types: dict[str, Any] = {}
    for name in inspect.signature(kernel.fn).parameters:
        if name in meta:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = "*bf16" if name in FULL_SIZE else "*fp32"
        elif name in ("xs", "ys", "gs", "ts"):  # a tensor's four strides
            types[name] = ("i32",) * 4
        else:
            types[name] = "fp32" if name.endswith("_scale") else "i32"
    return types, {k: v for k, v in meta.items() if types.get(k) == "constexpr"}


@pytest.mark.parametrize(("module", "name", "kind"), CASES, ids=str)
def test_kernels_compile_with_their_helpers_inlined(module: str, name: str, kind: dict) -> None:
    kernel = getattr(importlib.import_module(f"normbench.variants.{module}"), name)
    target = GPUTarget("cuda", 80, 32)
    backend = make_backend(target)
    options = backend.parse_options({})
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    types, constants = _signature(kernel, {**META, **kind})
    source = ASTSource(fn=kernel, signature=types, constexprs=constants)
    codegen = backend.get_codegen_implementation(options)
    module_ir = source.make_ir(target, options, codegen, backend.get_module_map(), context)
    stages: dict[str, Any] = {}
    backend.add_stages(stages, options, source.language)
    lowered = stages["ttgir"](stages["ttir"](module_ir, {}), {"num_warps": 4})
    text = str(lowered)
    assert "tt.call" not in text and "tt.load" in text, name
