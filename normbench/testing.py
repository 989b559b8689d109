"""Reusable conformance tests for normalization variants (like `optuna.testing`), and for
tasks: `TaskConformance` (normbench/testing_tasks.py, docs/tasks.md#conformance) checks a task
the same way.

Any variant, built-in or plugin, runs the whole contract (docs/variants.md#contract and
docs/variants.md#tests) with two lines:

    from normbench.testing import VariantConformance

    class TestMyNorm(VariantConformance):
        variant = MyNorm      # the class, or a registry name string such as "gn"
        options = {}          # optional constructor options (what a suite would pass)

Class attributes adapt the checks to special needs without skipping them:

* `input_shape` (N, C, H, W), `gradcheck_shape`, `gradgradcheck_shape`, `resnet_input_shape`:
  the inputs used.
  IN raises on 1×1 maps, so its ResNet test needs 64×64 images instead of 32×32.
* `input_offset`: added to the N(0, 1.5²) test inputs. The shared offset (like post-ReLU
  activations) gives samples a high cosine similarity, so similarity-gated layers (UBN) train
  on batch statistics.
* `train_batch_dependent`: whether a sample's training output depends on the rest of the
  batch (default: the class attribute `batch_dependent`).
* `batch_independent_eval`: whether eval output is per sample (default True; False e.g. for
  BN with track_running_stats=False).
* `updates_buffers_in_training`: default: the layer has buffers.
* `atol`, `rtol`: float32 tolerances of the allclose comparisons.

Layer facts the harness relies on:

* the decay hook: `normbench.variants_api.identity_targets` answers for the layer (its
  `decay_targets()`, or a (C,) gamma), so `norm_decay_toward: identity` can train it;
* "global_stats": a batch-dependent layer declaring `global_stats = True` is run as two gloo
  ranks against the concatenated batch (`normbench.testing_ranks`; two processes, seconds).

GPU-readiness checks (a plugin may opt out of one with a reason, see `opt_out`; also of
"global_stats"):

* "compile": `torch.compile(fullgraph=True)` (no graph break, hence no host sync such as
  `.item()` in the step) matches eager in outputs, input and parameter gradients and buffers,
  over two training steps and one eval step. The backend is `compile_backend`, "aot_eager" by
  default: it runs Dynamo's capture and AOTAutograd's forward/backward graphs (what Inductor
  receives) in seconds; Inductor's code generation takes minutes per layer on a CPU and is
  exercised by `normbench bench gpu`.
* "double_backward": float64 `gradgradcheck` of the training forward (gradient penalties,
  MAML), with the same fresh-buffer wrapping as the gradcheck.
* "torch_func": `torch.func.grad` of a training loss equals autograd's, and `torch.func.vmap`
  over samples in eval mode equals the batched eval output (training-mode vmap is ill-defined
  for a layer whose statistics pool the batch).
* "fx_trace": `torch.fx.symbolic_trace` of a small model holding the layer gives the same
  outputs in training and eval, and a wrong input still raises ValueError through the graph.
* "accelerator": two training steps on the accelerator path (CUDA, or FakeTensors of CUDA on
  a machine without one, `normbench.traffic.count_step`), bf16 under autocast: no host
  sync (`.item()`, `float(t)`, a copy to the host) and no host data copied to the device, and a
  channels_last input keeps channels_last (output and input gradient). The bytes it moves
  are `normbench bench traffic`'s business (`--plugin FILE`).
* "autocast": under CPU bf16 autocast, with a bf16 input, the buffers equal those of the fp32
  layer fed the same (bf16-rounded) input to fp32 accumulation-order tolerance, and the output
  is within two bf16 rounding steps of it: statistics are computed in fp32 (as BN's kernel does).

The inputs are tiny: on a busy CPU, `torch.set_num_threads(1)` in the test suite's conftest
keeps the whole class to a few seconds per variant.

Gradcheck choice: layers that update buffers in training are not pure functions (the next
call sees new running statistics and a new counter, which matters for momentum None). The
training forward is therefore wrapped with `torch.func.functional_call`, passing the
parameters under test and fresh *clones* of the buffers on every call: each evaluation starts
from the same state, the module's own buffers are never touched, and the gradient checked is
the training-mode one, through the batch statistics, the one that optimisation uses.
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.testing_tasks import TaskConformance

__all__ = ["OPTIONAL_CHECKS", "TaskConformance", "VariantConformance"]

YAML_TYPES = (int, float, bool, str, type(None))


class VariantConformance:
    """Subclass as `TestSomething` and set `variant` (and `options`) to run the contract."""

    variant: ClassVar[type | str | None] = None
    options: ClassVar[dict[str, Any]] = {}
    input_shape: ClassVar[tuple[int, int, int, int]] = (4, 8, 5, 5)
    gradcheck_shape: ClassVar[tuple[int, int, int, int]] = (3, 4, 3, 3)
    gradgradcheck_shape: ClassVar[tuple[int, int, int, int]] = (2, 4, 2, 2)
    resnet_input_shape: ClassVar[tuple[int, int, int, int]] = (4, 3, 32, 32)
    input_offset: ClassVar[float] = 2.0
    train_batch_dependent: ClassVar[bool | None] = None
    batch_independent_eval: ClassVar[bool] = True
    updates_buffers_in_training: ClassVar[bool | None] = None
    atol: ClassVar[float] = 1e-5
    rtol: ClassVar[float] = 1e-4
    # check name (OPTIONAL_CHECKS: "compile", ..., "accelerator", "global_stats") -> why this
    # variant cannot meet it; the check is then skipped with that reason.
    opt_out: ClassVar[dict[str, str]] = {}
    compile_backend: ClassVar[str] = "aot_eager"

    # -- helpers --------------------------------------------------------------------------
    @pytest.fixture(autouse=True)
    def _seed(self) -> None:
        torch.manual_seed(0)  # parameter initialisations may be random (SaBN's γ_k)

    def variant_class(self) -> Any:
        """The class under test; a string is looked up in the variant registry."""
        if self.variant is None:
            raise TypeError(f"{type(self).__name__}: set the class attribute `variant`")
        cls = self.variant
        if isinstance(cls, str):
            from normbench.variants_api import VARIANTS

            cls = VARIANTS.get(cls).obj
        self.check_conditioning(cls)
        return cls

    def check_conditioning(self, cls: Any) -> None:
        """TypeError for a layer this kit cannot call as forward(x) (`conditioning = "style"`:
        `normbench.testing_style.StyleConformance` checks those)."""
        if getattr(cls, "conditioning", None) not in (None, "index"):
            raise TypeError(
                f"{type(self).__name__}: {cls.__name__} takes forward(x, "
                f"{cls.conditioning}); run normbench.testing_style.StyleConformance on it"
            )

    def build(self, num_features: int | None = None, **extra: Any) -> nn.Module:
        """`partial(Variant, **options)(C)`, the way a suite or torchvision builds it."""
        factory = functools.partial(self.variant_class(), **self.options, **extra)
        return factory(self.input_shape[1] if num_features is None else num_features)

    def make_input(
        self,
        shape: tuple[int, ...] | None = None,
        seed: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """N(offset, 1.5²) input from a private generator (the global RNG is left alone)."""
        g = torch.Generator().manual_seed(seed)
        shape = self.input_shape if shape is None else shape
        return torch.randn(shape, generator=g, dtype=dtype) * 1.5 + self.input_offset

    def skip_if_opted_out(self, check: str) -> None:
        """Skip `check` with the variant's reason if `opt_out` names it."""
        if check not in OPTIONAL_CHECKS:
            raise KeyError(f"unknown check {check!r}; the checks are {list(OPTIONAL_CHECKS)}")
        for name, reason in self.opt_out.items():
            if name not in OPTIONAL_CHECKS or not isinstance(reason, str) or not reason.strip():
                raise TypeError(
                    f"{type(self).__name__}.opt_out must map check names {list(OPTIONAL_CHECKS)} "
                    f"to a non-empty reason, but got {name!r}: {reason!r}"
                )
        if check in self.opt_out:
            pytest.skip(f"opted out of {check}: {self.opt_out[check]}")

    def functional_training_forward(
        self, layer: nn.Module
    ) -> tuple[Any, tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
        """(fn, params, buffers): fn(x, *params) runs the training forward on fresh buffer
        clones, so every call is the same pure function (see the module docstring)."""
        names = [k for k, _ in layer.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
        buffers = {k: b.detach().clone() for k, b in layer.named_buffers()}

        def fn(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
            state = {**dict(zip(names, ps, strict=True))}
            state.update({k: b.clone() for k, b in buffers.items()})
            return torch.func.functional_call(layer, state, (x,))

        return fn, params, buffers

    def close(self, a: torch.Tensor, b: torch.Tensor) -> None:
        torch.testing.assert_close(a, b, atol=self.atol, rtol=self.rtol)

    @staticmethod
    def perturb(layer: nn.Module, scale: float = 0.2) -> nn.Module:
        """Move every parameter away from its initial value (e.g. BNET's zero init, where
        the output is constant, or gates at exactly 0), so checks see a generic layer."""
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
        return layer

    @staticmethod
    def snapshot(layer: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in layer.state_dict().items()}

    @staticmethod
    def changed(before: dict[str, torch.Tensor], layer: nn.Module) -> list[str]:
        after = layer.state_dict()
        assert after.keys() == before.keys(), "state_dict keys changed during forward"
        return [k for k in before if not torch.equal(before[k], after[k])]

    # -- construction ---------------------------------------------------------------------
    def test_builds_with_one_positional_argument(self) -> None:
        cls = self.variant_class()
        c = self.input_shape[1]
        for layer in (cls(c), self.build()):
            assert isinstance(layer, nn.Module)
            for attr in ("weight", "bias"):
                assert hasattr(layer, attr), f"{cls.__name__} has no .{attr} (use None)"
                value = getattr(layer, attr)
                assert value is None or isinstance(value, nn.Parameter), attr

    def test_constructor_contract(self) -> None:
        cls = self.variant_class()
        assert isinstance(getattr(cls, "paper", None), str) and cls.paper, "class attr `paper`"
        assert isinstance(getattr(cls, "batch_dependent", None), bool), "`batch_dependent`"
        assert isinstance(getattr(cls, "global_stats", False), bool), "`global_stats`"
        params = list(inspect.signature(cls).parameters.values())
        assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        names = {p.name for p in params}
        assert {"eps", "momentum", "device", "dtype"} <= names
        for p in params[1:]:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, f"option {p.name} not keyword-only"
            assert isinstance(p.default, YAML_TYPES), f"{p.name} default is not a YAML type"

    def test_extra_repr_shows_options(self) -> None:
        params = list(inspect.signature(self.variant_class()).parameters)[1:]
        text = repr(self.build())
        contract = {"eps", "momentum", "device", "dtype"}  # GN, say, ignores momentum
        for name in (set(params) | set(self.options)) - contract:
            assert f"{name}=" in text, f"extra_repr does not show option {name!r}: {text}"

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_output_shape_and_dtype(self, dtype: torch.dtype) -> None:
        layer = self.build().to(dtype)
        x = self.make_input(dtype=dtype)
        for training in (True, False):
            y = layer.train(training)(x)
            assert y.shape == x.shape and y.dtype == dtype
            assert torch.isfinite(y).all()

    def test_device_and_dtype_arguments(self) -> None:
        layer = self.build(device="cpu", dtype=torch.float64)
        for name, p in layer.named_parameters():
            assert p.dtype == torch.float64, f"parameter {name} is {p.dtype}, not float64"
        for name, b in layer.named_buffers():
            if b.is_floating_point():
                assert b.dtype == torch.float64, f"buffer {name} is {b.dtype}, not float64"
            else:  # counters stay int64, flags bool
                assert b.dtype in (torch.int64, torch.bool), f"buffer {name} is {b.dtype}"
        y = layer(self.make_input(dtype=torch.float64))
        assert y.dtype == torch.float64

    def test_to_float64(self) -> None:
        layer = self.build()
        int_dtypes = {k: b.dtype for k, b in layer.named_buffers() if not b.is_floating_point()}
        layer = layer.to(torch.float64)
        for name, t in [*layer.named_parameters(), *layer.named_buffers()]:
            assert t.dtype == int_dtypes.get(name, torch.float64), name
        for training in (True, False):
            assert layer.train(training)(self.make_input(dtype=torch.float64)).dtype == (
                torch.float64
            )

    # -- modes and state ------------------------------------------------------------------
    def test_eval_is_deterministic_and_changes_no_state(self) -> None:
        layer = self.build()
        layer(self.make_input(seed=2))  # move the buffers away from their initial values
        layer.eval()
        before = self.snapshot(layer)
        x = self.make_input()
        y1, y2 = layer(x), layer(x)
        assert torch.equal(y1, y2), "two eval calls on the same input differ"
        assert not self.changed(before, layer), "eval changed state_dict entries"

    def test_buffers_update_only_in_training(self) -> None:
        layer = self.build()
        expect = self.updates_buffers_in_training
        if expect is None:
            expect = any(True for _ in layer.buffers())
        before = self.snapshot(layer.eval())
        layer(self.make_input())
        assert not self.changed(before, layer), "eval forward changed the buffers"
        layer.train()(self.make_input())
        changed = self.changed(before, layer)
        params = {k for k, _ in layer.named_parameters()}
        assert not set(changed) & params, "a training forward changed parameters"
        assert bool(changed) == expect, f"training forward changed {changed}, expected {expect}"

    def test_momentum_zero_freezes_running_statistics(self) -> None:
        layer = self.build(momentum=0.0)
        stats = {k for k in ("running_mean", "running_var") if hasattr(layer, k)}
        before = self.snapshot(layer)
        layer.train()(self.make_input())
        assert not set(self.changed(before, layer)) & stats
        self.build(momentum=None).train()(self.make_input())  # None: cumulative average

    def test_train_batch_dependence(self) -> None:
        """Training output of the first sample when every other sample of the batch changes
        (whatever group of samples the layer's statistics span, ghost batches of 2
        included, it holds the first one and another)."""
        expect = self.train_batch_dependent
        if expect is None:
            expect = bool(self.variant_class().batch_dependent)
        layer = self.perturb(self.build())
        x = self.make_input()
        mates = torch.cat([x[:1], self.make_input(seed=3)[1:]])
        y = copy.deepcopy(layer)(x)[:1]
        y_mates = layer(mates)[:1]
        same = torch.allclose(y, y_mates, atol=self.atol, rtol=self.rtol)
        assert same != expect, f"batch-dependent in training should be {expect}"

    def test_eval_batch_independence(self) -> None:
        layer = self.perturb(self.build())
        layer(self.make_input(seed=2))
        layer.eval()
        x = self.make_input()
        same = torch.allclose(layer(x)[:2], layer(x[:2]), atol=self.atol, rtol=self.rtol)
        assert same == self.batch_independent_eval

    def test_input_not_mutated(self) -> None:
        layer = self.build()
        x = self.make_input()
        reference, version = x.clone(), x._version
        for training in (True, False):
            layer.train(training)(x)
        assert torch.equal(x, reference) and x._version == version, "forward mutated its input"

    def test_every_parameter_gets_finite_gradient(self) -> None:
        layer = self.build().train()
        x = self.make_input().requires_grad_()
        y = layer(x)
        probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
        (y * probe).sum().backward()  # not invariant to the normalisation, unlike y.sum()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        for name, p in layer.named_parameters():
            assert p.grad is not None, f"parameter {name} received no gradient"
            assert torch.isfinite(p.grad).all(), f"parameter {name} has a non-finite gradient"

    def test_state_dict_round_trip(self) -> None:
        layer = self.perturb(self.build())
        for seed in (2, 3):
            layer(self.make_input(seed=seed))
        fresh = self.build()
        fresh.load_state_dict(layer.state_dict())
        x = self.make_input()
        torch.testing.assert_close(fresh.eval()(x), layer.eval()(x), atol=0.0, rtol=0.0)

    def test_channels_last_matches_contiguous(self) -> None:
        a = self.perturb(self.build())
        b = copy.deepcopy(a)
        x = self.make_input()
        xa = x.clone().requires_grad_()
        xb = x.clone().to(memory_format=torch.channels_last).requires_grad_()
        ya, yb = a(xa), b(xb)
        self.close(yb, ya)
        probe = torch.randn(ya.shape, generator=torch.Generator().manual_seed(3))
        (ya * probe).sum().backward()
        (yb * probe).sum().backward()
        assert xa.grad is not None and xb.grad is not None
        self.close(xb.grad, xa.grad)
        for (name, ba), bb in zip(a.named_buffers(), b.buffers(), strict=True):
            torch.testing.assert_close(bb, ba, atol=self.atol, rtol=self.rtol, msg=name)
        self.close(b.eval()(xb.detach()), a.eval()(xa.detach()))

    def test_channels_last_is_kept(self) -> None:
        """A channels_last input gives a channels_last output and input gradient, in training
        and eval: otherwise the next convolution converts back (a full copy per layer)."""
        layer = self.perturb(self.build())
        cl = torch.channels_last
        for training in (True, False):
            x = self.make_input().contiguous(memory_format=cl).requires_grad_()
            y = layer.train(training)(x)
            y.backward(torch.ones(y.shape).contiguous(memory_format=cl))
            assert y.is_contiguous(memory_format=cl), f"output not channels_last ({training=})"
            assert x.grad is not None and x.grad.is_contiguous(memory_format=cl), (
                f"input gradient not channels_last ({training=})"
            )

    def test_zeroed_weight_makes_output_constant(self) -> None:
        layer = self.build()
        weight = layer.weight
        if weight is None:
            pytest.skip("weight is None: zero_init_residual skips this layer")
        assert isinstance(weight, torch.Tensor)
        with torch.no_grad():
            weight.zero_()
        for training in (True, False):
            layer.train(training)
            y1, y2 = layer(self.make_input(seed=1)), layer(self.make_input(seed=2))
            self.close(y1, y2)  # independent of x
            self.close(y1, y1[:1, :, :1, :1].expand_as(y1))  # a per-channel constant

    # -- errors ---------------------------------------------------------------------------
    def test_non_4d_input_raises(self) -> None:
        layer = self.build()
        n, c, h, w = self.input_shape
        for shape in [(n, c), (n, c, h), (n, c, 2, h, w)]:
            for training in (True, False):
                with pytest.raises(ValueError):
                    layer.train(training)(self.make_input(shape))

    def test_wrong_channel_count_raises(self) -> None:
        n, c, h, w = self.input_shape
        with pytest.raises(ValueError):
            self.build()(self.make_input((n, c + 1, h, w)))

    # -- integration ----------------------------------------------------------------------
    def test_torchvision_resnet18(self) -> None:
        from torchvision.models import resnet18

        norm_layer = functools.partial(self.variant_class(), **self.options)
        model = resnet18(num_classes=10, norm_layer=norm_layer, zero_init_residual=True)
        for block in (m for m in model.modules() if hasattr(m, "bn2")):
            if block.bn2.weight is not None:
                assert not block.bn2.weight.any(), "zero_init_residual did not zero .weight"
        x = self.make_input(self.resnet_input_shape)
        logits = model.train()(x)
        assert logits.shape == (x.shape[0], 10)
        F.cross_entropy(logits, torch.arange(x.shape[0]) % 10).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        # not "non-zero": a layer built to output a constant (BNET init="zero") blocks it
        assert model.conv1.weight.grad is not None, "no gradient reached the stem"
        assert all(torch.isfinite(g).all() for g in grads)
        assert torch.isfinite(model.eval()(x)).all()

    def test_gradcheck_float64_training(self) -> None:
        """float64 gradcheck of the training forward w.r.t. input and parameters.

        See the module docstring: buffers are passed as fresh clones on every call, so each
        evaluation is the same pure function of (x, parameters).
        """
        layer = self.perturb(self.build(self.gradcheck_shape[1]).to(torch.float64)).train()
        fn, params, buffers = self.functional_training_forward(layer)
        x = self.make_input(self.gradcheck_shape, dtype=torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-3)
        for name, b in layer.named_buffers():
            assert torch.equal(b, buffers[name]), f"gradcheck leaked into buffer {name}"

    # -- GPU readiness ----------------------------------------------------------------------
    def test_compile_fullgraph_matches_eager(self) -> None:
        """torch.compile(fullgraph=True): no graph break (so no host sync), eager's numbers."""
        self.skip_if_opted_out("compile")
        from torch._dynamo.testing import CompileCounterWithBackend

        torch._dynamo.reset()
        eager = self.perturb(self.build()).train()
        module = copy.deepcopy(eager)
        counter = CompileCounterWithBackend(self.compile_backend)
        compiled = torch.compile(module, backend=counter, fullgraph=True)
        for seed in (1, 2):
            x = self.make_input(seed=seed)
            xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
            ye, yc = eager(xe), compiled(xc)
            self.close(yc, ye)
            probe = torch.randn(ye.shape, generator=torch.Generator().manual_seed(seed))
            (ye * probe).sum().backward()
            (yc * probe).sum().backward()
            assert xe.grad is not None and xc.grad is not None
            self.close(xc.grad, xe.grad)
            for (name, pe), pc in zip(eager.named_parameters(), module.parameters(), strict=True):
                assert pe.grad is not None and pc.grad is not None, name
                torch.testing.assert_close(pc.grad, pe.grad, atol=self.atol, rtol=self.rtol)
            for (name, be), bc in zip(eager.named_buffers(), module.buffers(), strict=True):
                torch.testing.assert_close(bc, be, atol=self.atol, rtol=self.rtol, msg=name)
        eager.eval()
        module.eval()
        x = self.make_input(seed=3)
        self.close(compiled(x), eager(x))
        # one graph for training, one for eval: a step does not recompile
        assert counter.frame_count <= 2, f"{counter.frame_count} compilations for 2 modes"

    def test_double_backward_gradgradcheck(self) -> None:
        """Second derivatives (gradient penalties, MAML) against float64 finite differences."""
        self.skip_if_opted_out("double_backward")
        shape = self.gradgradcheck_shape
        layer = self.perturb(self.build(shape[1]).to(torch.float64)).train()
        fn, params, _ = self.functional_training_forward(layer)
        x = self.make_input(shape, dtype=torch.float64).requires_grad_()
        assert torch.autograd.gradgradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-3)

    def test_torch_func_grad_and_vmap(self) -> None:
        self.skip_if_opted_out("torch_func")
        layer = self.perturb(self.build()).train()
        fn, params, _ = self.functional_training_forward(layer)
        x = self.make_input()
        probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))

        def loss(xx: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
            return (fn(xx, *ps) * probe).sum()

        # the input's gradient and every parameter's (a layer may have none: AdaIN)
        args = (x.clone().requires_grad_(), *params)
        grads = torch.func.grad(loss, argnums=tuple(range(len(args))))(*args)
        expected = torch.autograd.grad(loss(*args), args)
        for got, want in zip(grads, expected, strict=True):
            self.close(got, want)
        if not self.batch_independent_eval:
            return  # eval pools the batch: a per-sample vmap computes something else
        layer(self.make_input(seed=2))  # move the running statistics
        layer.eval()
        per_sample = torch.func.vmap(lambda xi: layer(xi[None])[0])(x)
        self.close(per_sample, layer(x))

    def test_fx_symbolic_trace(self) -> None:
        self.skip_if_opted_out("fx_trace")
        c = self.input_shape[1]
        model = nn.Sequential(self.perturb(self.build()), nn.Conv2d(c, c, 1))
        reference = copy.deepcopy(model)
        traced = torch.fx.symbolic_trace(model)
        for training in (True, False):
            traced.train(training)
            reference.train(training)
            x = self.make_input()
            self.close(traced(x), reference(x))
        n, _, h, w = self.input_shape
        with pytest.raises(ValueError):
            traced(self.make_input((n, c, h, w))[:, :, 0])  # 3-D: the check runs in the graph

    def test_accelerator_path_has_no_host_sync_and_keeps_channels_last(self) -> None:
        """Training steps on CUDA's code path (simulated without a GPU): no host sync, no host
        data copied to the device, channels_last kept (see the module docstring)."""
        self.skip_if_opted_out("accelerator")
        from normbench.traffic import count_step

        for memory_format in (torch.contiguous_format, torch.channels_last):
            tally, _, kept = count_step(
                self.build,
                self.input_shape,
                torch.bfloat16,
                torch.device("cuda"),
                memory_format,
                regions=False,  # their kernels: `normbench bench traffic` (compiles)
            )
            assert tally.syncs == 0 and tally.copies == 0, f"host syncs/copies: {tally.log}"
            assert kept, f"the accelerator path does not keep {memory_format}"

    def test_decay_targets_name_the_identity_affine(self) -> None:
        """`norm_decay_toward: identity` can train the layer: it names what L2 pulls each
        parameter to (`decay_targets()`, or a (C,) gamma toward 1), each target with its
        parameter's shape and dtype, finite, also when built on the meta device (as suite
        validation builds it)."""
        from normbench.variants_api import identity_targets

        layer = self.build()
        targets = identity_targets(layer)  # ValueError: the layer cannot answer
        params = dict(layer.named_parameters())
        for name, target in targets.items():
            p = params[name]
            assert (target.shape, target.dtype) == (p.shape, p.dtype), name
            assert torch.isfinite(target).all(), name
        try:
            meta = self.build(device="meta")
        except NotImplementedError:  # an init that cannot run on meta tensors: built on CPU
            return
        assert set(identity_targets(meta)) == set(targets)

    def test_global_stats_claim(self) -> None:
        """A batch-dependent layer that declares `global_stats = True`: as a 2-rank DDP module
        under `global_statistics` (gloo, CPU) it computes what it computes in one process on
        the concatenated batch (normbench.testing_ranks; starts two processes)."""
        cls = self.variant_class()
        if getattr(cls, "global_stats", False) is not True or not getattr(
            cls, "batch_dependent", False
        ):
            return  # nothing to exchange (per-sample statistics), or nothing claimed
        self.skip_if_opted_out("global_stats")
        from normbench.testing_ranks import case_for, check_claims

        found = check_claims({"claim": case_for(cls, dict(self.options))})["claim"]
        assert not found, "global_stats = True, but the ranks differ: " + "; ".join(found[:5])

    def test_autocast_bf16_statistics_in_fp32(self) -> None:
        """CPU bf16 autocast vs the fp32 layer on the same bf16-rounded input: buffers to
        fp32 accumulation-order tolerance, output within two bf16 steps (BN meets one)."""
        self.skip_if_opted_out("autocast")
        layer = self.perturb(self.build()).train()
        reference = copy.deepcopy(layer)
        for seed in (1, 2):
            x = self.make_input(seed=seed).bfloat16()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = layer(x)
            expected = reference(x.float())
            assert y.dtype == torch.bfloat16, f"output dtype {y.dtype} under bf16 autocast"
            torch.testing.assert_close(
                y.float(), expected, atol=AUTOCAST_OUT_TOL, rtol=AUTOCAST_OUT_TOL
            )
        for (name, b), r in zip(layer.named_buffers(), reference.buffers(), strict=True):
            assert b.dtype == r.dtype, f"buffer {name} changed dtype to {b.dtype}"
            if b.is_floating_point():
                torch.testing.assert_close(b, r, atol=1e-6, rtol=AUTOCAST_STATS_RTOL, msg=name)
            else:
                assert torch.equal(b, r), name


GPU_CHECKS = ("compile", "double_backward", "torch_func", "fx_trace", "autocast", "accelerator")
# Checks a variant may opt out of with a reason: the GPU ones, and the two-process check of a
# global_stats claim (the built-ins' claims are checked together, normbench.testing_ranks).
OPTIONAL_CHECKS = (*GPU_CHECKS, "global_stats")
# Output: torch.testing's bf16 rtol (two bf16 rounding steps, as for a bf16 depthwise conv
# after the normalisation, BNET/UBN), also as atol; measured, BN's own kernel is within
# 2.3e-3 of (|y| + 1). Buffers: fp32 reductions in another order (BN: 1.2e-7 absolute),
# where bf16 statistics are off by 1e-3 or more.
AUTOCAST_OUT_TOL = 1.6e-2
AUTOCAST_STATS_RTOL = 1e-5  # with atol 1e-6
