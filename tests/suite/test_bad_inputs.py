"""The bad-input corpus: every input a user can get wrong, through the CLI a user types.

Each case asserts exit status 2, exactly one line on stderr (`normbench: error: ...`, naming
the problem and, for a suite, FILE:LINE), no traceback, nothing written on disk, and Ray never
started. The cases are those of issue 15 (non-UTF-8, 20,000-deep nesting, unknown tags,
malformed typed scalars, `ghost_batch_size: 0`, `seeds: 1e11`, the alias bomb, plugins that
exit), the existing bad-suite cases of test_schema.py, one case per size limit and per zero
or negative that would divide or loop, every constructor refusal that must surface at
validation, and what a new user's walk found (a `--set` list's items located at the flag, a
group count that fails only at a detector's FPN and head width; `exact` cases compare the
whole line). The alias bomb also runs in a subprocess under a 1 GiB address-space limit.
"""

# ruff: noqa: E501  (the corpus table keeps one case per line)
from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from normbench import registry
from normbench.cli import main

BASE = {
    "version": "1",
    "name": "corpus",
    "dataset": "{name: digits, image_size: 8}",
    "backbones": "[resnet20]",
    "variants": "[bn]",
    "batch_sizes": "[16]",
    "train": "{epochs: 1}",
}


def suite(**keys: str) -> str:
    """The base suite with top-level keys replaced (or added, or dropped with None)."""
    merged = {**BASE, **keys}
    return "".join(f"{k}: {v}\n" for k, v in merged.items() if v is not None)


def train(extra: str) -> str:
    return "{epochs: 1, " + extra + "}"


def variant(options: str, name: str = "bn") -> str:
    return "[{name: " + name + ", options: {" + options + "}}]"


BOMB = (
    "version: 1\nname: lol\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(
        f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
)

EXITS = "import sys\nsys.exit(3)\n"
# a committed run directory (bn and ubn on resnet20, seeds 0-3): what init_from reads
RUN_SMALL = Path(__file__).resolve().parents[1] / "reports" / "fixtures" / "run_small"
DETECTOR = "{name: detection, options: {layout: small, width: 32}}"
CANVASES = "{name: digits_coco, image_size: 48}"
STYLE_NET = "[{name: adain_vgg19, options: {encoder_weights: random, width_divisor: 16}}]"
CONDITIONED = """
from torch import nn
from normbench import register_variant

@register_variant("captioned")
class Captioned(nn.BatchNorm2d):
    paper = "corpus (nowhere 2026)"
    batch_dependent = True
    conditioning = "text"

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
"""
PLUGIN_VARIANT = """
from torch import nn
from normbench import register_variant

@register_variant("corpus_norm")
class CorpusNorm(nn.BatchNorm2d):
    paper = "corpus (nowhere 2026)"
    batch_dependent = True

    def __init__(self, num_features, *, k: int = 2, eps=1e-5, momentum=0.1, device=None,
                 dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        if k > 4:
            raise SystemExit("constructor exits")

    @classmethod
    def check_options(cls, options, *, batch_size, widths):
        if options.get("k") == 3 and batch_size is not None and batch_size < 32:
            return {"k": f"k=3 cannot run at batch size {batch_size}"}
        if options.get("k") == 0:
            return 1 / 0
        return {}
"""

# A .weight that is no (C,) gamma and no decay_targets() hook: it cannot say where L2 toward
# the identity affine pulls it (issue 21).
PLUGIN_NO_IDENTITY = """
import torch
from torch import nn
from normbench import register_variant

@register_variant("odd_norm")
class OddNorm(nn.Module):
    paper = "corpus (nowhere 2026)"
    batch_dependent = False

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features, 2, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))

    def forward(self, x):
        return x * self.weight[:, 0].view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
"""


@dataclass
class Case:
    """A suite text (or bytes), extra CLI arguments, files beside it, and what stderr says."""

    text: str | bytes | None
    expect: str
    args: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    command: str = "run"  # "run" (with --dry-run unless "real" in args), "variants" or "train"
    exact: bool = False  # `expect` is the whole line after "normbench: error: " (SUITE: its path)


CASES: dict[str, Case] = {
    # -- issue 15: inputs that ended in a traceback -------------------------------------
    "not_utf8": Case(suite(description="caf\xe9").encode("latin-1"), "not UTF-8 text (byte 0xe9)"),
    "utf16": Case(suite().encode("utf-16"), "not UTF-8 text"),
    "deep_20000_flow": Case("a: " + "[" * 20000 + "]" * 20000 + "\n", "nesting deeper than 64"),
    "deep_block": Case("".join(" " * i + f"k{i}:\n" for i in range(100)) + " " * 100 + "x: 1\n", "nesting deeper than 64"),
    "tag_foo": Case(suite(variants="[!foo bn]"), "the YAML tag '!foo' is not allowed"),
    "tag_python_object": Case(suite(variants="[!!python/object:os.system bn]"), "'!!python/object:os.system' is not allowed"),
    "tag_python_name": Case(suite(description="!!python/name:os.system ''"), "'!!python/name:os.system' is not allowed"),
    "tag_python_apply": Case(suite(description="!!python/object/apply:os.system [echo hi]"), "is not allowed"),
    "tag_binary": Case(suite(description='!!binary "###"'), "'!!binary' is not allowed"),
    "tag_timestamp": Case(suite(description="!!timestamp 2020-13-45"), "'!!timestamp' is not allowed"),
    "tag_set": Case(suite(description="!!set {a, b}"), "'!!set' is not allowed"),
    "bad_int_scalar": Case(suite(train="{epochs: !!int abc}"), "train.epochs: 'abc' is not a valid !!int"),
    "bad_float_scalar": Case(suite(train=train("lr: !!float fast")), "'fast' is not a valid !!float"),
    "bad_bool_scalar": Case(suite(train=train("nesterov: !!bool maybe")), "'maybe' is not a valid !!bool"),
    "bad_null_scalar": Case(suite(description="!!null nothing"), "'nothing' is not a valid !!null"),
    "int_too_many_digits": Case(suite(train="{epochs: " + "9" * 5000 + "}"), "has too many digits"),
    "seq_tag_on_scalar": Case(suite(description="!!seq abc"), "cannot mark a scalar"),
    "date_is_not_an_int": Case(suite(train="{epochs: 2020-13-45}"), "train.epochs: Input should be a valid integer"),
    "ghost_batch_size_0": Case(suite(variants=variant("ghost_batch_size: 0", "ghost_bn")), "`ghost_batch_size` must be an int >= 1, but got 0"),
    "ghost_num_splits_0": Case(suite(variants=variant("num_splits: 0", "ghost_bn")), "`num_splits` must be an int >= 1, but got 0"),
    "seeds_1e11": Case(suite(seeds="1e11"), "seeds: a seed count must be an integer, but got 1e+11"),
    "seeds_10e10_int": Case(suite(seeds="100000000000"), "a seed count must be between 1 and 1000 (the limit), but got 100000000000"),
    "alias_bomb": Case(BOMB, "expand the suite to more than 100000 values"),
    "recursive_alias": Case("version: 1\nname: x\nloop: &a [*a]\n", "an alias inside its own anchor"),
    "undefined_alias": Case(suite(variants="[*nothing]"), "found undefined alias"),
    # -- sizes bounded before anything allocates -----------------------------------------
    "file_too_large": Case(suite() + "#" * (1 << 20) + "\n", "larger than 1048576 bytes"),
    "epochs_above_limit": Case(suite(train="{epochs: 100000}"), "less than or equal to 10000 (got 100000)"),
    "batch_above_limit": Case(suite(batch_sizes="[1000000]"), "batch_sizes: every value must be between 1 and 65536 (the limit), but got [1000000]"),
    "seed_value_above_limit": Case(suite(seeds="[1099511627776]"), "between 0 and 4294967295 (the limit)"),
    "seed_list_too_long": Case(suite(seeds="[" + ", ".join(map(str, range(1001))) + "]"), "at most 1000 items after validation, not 1001 (got [0, 1, 2"),
    "matrix_too_big": Case(suite(seeds="1000", batch_sizes="[" + ", ".join(str(2 * i + 2) for i in range(11)) + "]"), "the trial matrix has 11000 cells"),
    "eval_batch_above_limit": Case(suite(train=train("eval_batch_size: 100000")), "less than or equal to 65536"),
    "image_size_above_limit": Case(suite(dataset="{name: digits, image_size: 100000}"), "less than or equal to 4096"),
    "num_samples_above_limit": Case(suite(variants="[ubn]", search="{num_samples: 1000000, space: {variant_options.tau: {type: float, low: 0.1, high: 0.5}}}"), "less than or equal to 10000"),
    "retries_above_limit": Case(suite(retries="1000"), "less than or equal to 100"),
    # -- zeros and negatives that would divide or loop ------------------------------------
    "epochs_0": Case(suite(train="{epochs: 0}"), "train.epochs: Input should be greater than or equal to 1 (got 0)"),
    "batch_0": Case(suite(batch_sizes="[0]"), "between 1 and 65536"),
    "seed_count_0": Case(suite(seeds="0"), "a seed count must be between 1 and 1000"),
    "seed_negative": Case(suite(seeds="[-1]"), "between 0 and 4294967295"),
    "lr_0": Case(suite(train=train("lr: 0")), "train.lr: Input should be greater than 0"),
    "lr_inf": Case(suite(train=train("lr: .inf")), "train.lr: Input should be a finite number"),
    "lr_nan": Case(suite(train=train("lr: .nan")), "train.lr: Input should be a finite number"),
    "gamma_0": Case(suite(train=train("gamma: 0")), "train.gamma"),
    "eval_batch_0": Case(suite(train=train("eval_batch_size: 0")), "train.eval_batch_size"),
    "probe_batch_1": Case(suite(train=train("probe_batch_size: 1")), "train.probe_batch_size"),
    "checkpoint_every_0": Case(suite(train=train("checkpoint_every: 0")), "train.checkpoint_every"),
    "lr_reference_batch_0": Case(suite(train=train("lr_reference_batch: 0")), "train.lr_reference_batch"),
    "limit_batches_0": Case(suite(train=train("limit_batches: 0")), "train.limit_batches"),
    "num_threads_0": Case(suite(train=train("num_threads: 0")), "train.num_threads"),
    "warmup_negative": Case(suite(train=train("warmup_epochs: -1")), "train.warmup_epochs"),
    "grad_clip_0": Case(suite(train=train("grad_clip: 0")), "train.grad_clip"),
    "milestone_0": Case(suite(train="{epochs: 5, milestones: [0, 2]}"), "train.milestones[0]: Input should be greater than or equal to 1 (got 0)"),
    "milestones_decreasing": Case(suite(train="{epochs: 5, milestones: [3, 2]}"), "milestones must be increasing, each an integer >= 1, but got [3, 2]"),
    "cpus_0": Case(suite(resources="{cpus: 0}"), "resources.cpus"),
    "gpus_negative": Case(suite(resources="{gpus: -1}"), "resources.gpus"),
    "ghost_batch_over_global_batch": Case(suite(variants=variant("ghost_batch_size: 48", "ghost_bn"), train=train("devices: 2, stats_scope: global")), "ghost_batch_size=48 must divide batch size 32 (2 devices x 16, stats_scope: global)"),
    "ghost_batch_over_device_batch": Case(suite(variants=variant("ghost_batch_size: 32", "ghost_bn"), train=train("devices: 2")), "ghost_batch_size=32 must divide batch size 16"),
    "cuda_without_gpus": Case(suite(train=train("device: cuda"), resources="{cpus: 1, gpus: 0}"), "train.device: 'cuda' needs a GPU, but resources.gpus is 0: a trial that asks Ray for no GPU is given none"),
    "half_gpu_per_ddp_rank": Case(suite(train=train("devices: 2"), resources="{cpus: 1, gpus: 0.5}"), "resources.gpus: gpus: 0.5 is per device, so the 2 DDP ranks of a trial would share one GPU, which NCCL refuses"),
    "max_concurrent_0": Case(suite(max_concurrent="0"), "max_concurrent"),
    "retries_negative": Case(suite(retries="-1"), "retries"),
    "num_samples_0": Case(suite(variants="[ubn]", search="{num_samples: 0, space: {variant_options.tau: {type: float, low: 0.1, high: 0.5}}}"), "search.num_samples"),
    "grace_period_0": Case(suite(variants="[ubn]", search="{num_samples: 2, grace_period: 0, space: {variant_options.tau: {type: float, low: 0.1, high: 0.5}}}"), "search.grace_period"),
    "reduction_factor_1": Case(suite(variants="[ubn]", search="{num_samples: 2, reduction_factor: 1, space: {variant_options.tau: {type: float, low: 0.1, high: 0.5}}}"), "search.reduction_factor"),
    "search_step_0": Case(suite(variants="[ubn]", search="{num_samples: 2, space: {variant_options.tau: {type: float, low: 0.1, high: 0.5, step: 0}}}"), "step"),
    "search_log_low_0": Case(suite(variants="[ubn]", search="{num_samples: 2, space: {recipe.lr: {type: loguniform, low: 0, high: 0.5}}}"), "a log-scale parameter needs low > 0"),
    "image_size_0": Case(suite(dataset="{name: digits, image_size: 0}"), "dataset.image_size"),
    "val_fraction_1": Case(suite(dataset="{name: digits, val_fraction: 1.0}"), "dataset.val_fraction"),
    "augment_crop_negative": Case(suite(dataset="{name: digits, augment: {crop_padding: -1}}"), "augment.crop_padding must be an integer >= 0"),
    "augment_rotation_500": Case(suite(dataset="{name: digits, augment: {rotation: 500}}"), "augment.rotation must be a number of degrees in [0, 180]"),
    "synthetic_n_train_0": Case(suite(dataset="{name: synthetic, n_train: 0}"), "dataset.n_train: dataset 'synthetic': synthetic: n_train must be an integer >= 10, but got 0"),
    "gn_groups_0": Case(suite(variants=variant("num_groups: 0", "gn")), "`num_groups` must be an int >= 1, but got 0"),
    "gn_channels_per_group_0": Case(suite(variants=variant("channels_per_group: 0", "gn")), "`channels_per_group` must be an int >= 1"),
    "backbone_width_0": Case(suite(backbones="[{name: resnet20, options: {width: 0}}]"), "backbone 'resnet20' cannot be built with these options"),
    "bn_eps_0": Case(suite(variants=variant("eps: 0")), "`eps` must be a finite number > 0"),
    "bn_momentum_2": Case(suite(variants=variant("momentum: 2.0")), "momentum"),
    # -- constructor refusals and rules at validation ------------------------------------
    "sabn_index_augmented": Case(suite(variants="[sabn]", train=train("sabn_index: augmented")), "train.sabn_index: sabn_index 'augmented' is not supported"),
    "sabn_index_as_option": Case(suite(variants=variant("sabn_index: augmented", "sabn")), "variant 'sabn' has no option 'sabn_index'"),
    "gn_groups_not_dividing": Case(suite(variants=variant("num_groups: 12", "gn")), "num_groups=12 does not divide the norm widths [16, 32, 64]"),
    "gn_channels_per_group_5": Case(suite(variants=variant("channels_per_group: 5", "gn")), "rejects these options at a 16-channel layer of resnet20"),
    "ghost_not_dividing": Case(suite(variants=variant("ghost_batch_size: 24", "ghost_bn"), batch_sizes="[64]"), "ghost_batch_size=24 must divide batch size 64"),
    "batch_1_batch_dependent": Case(suite(batch_sizes="[1]"), "batch size 1 cannot train the batch-dependent variant 'bn'"),
    "option_int_for_bool": Case(suite(variants=variant("fct: 1", "ubn")), "option 'fct' expects a bool like the default True, but got 1"),
    "option_type_mismatch": Case(suite(variants=variant("eps: yes")), "expects a float like the default 1e-05, but got 'yes'"),
    "bgn_spatial_wrong_type": Case(suite(variants=variant("allow_spatial_groups: 1", "bgn")), "expects a bool"),
    # -- the existing bad-suite cases (test_schema.py, test_run.py) ------------------------
    "missing_file": Case(None, "cannot read the suite file"),
    "directory": Case(None, "cannot read the suite file", files={"suite.yaml/x": ""}),
    "empty_file": Case("", "the suite file is empty"),
    "comment_only": Case("# nothing\n", "the suite file is empty"),
    "not_a_mapping": Case("- a\n- b\n", "the suite must be a mapping"),
    "syntax_error": Case(suite(variants="[bn"), "invalid YAML"),
    "tab_indent": Case("version: 1\ntrain:\n\tepochs: 1\n", "invalid YAML"),
    "nul_character": Case(suite() + "x: \x00\n", "character #x0000 is not allowed"),
    "duplicate_key": Case(suite() + "variants: [gn]\n", "duplicate key"),
    "unknown_top_key": Case(suite(batch_size="[64]"), "unknown key 'batch_size' (did you mean 'batch_sizes'?)"),
    "missing_key": Case(suite(train=None), "train: required key is missing"),
    "unknown_train_key": Case(suite(train=train("warmup: 1")), "did you mean 'warmup_epochs'"),
    "unknown_dataset": Case(suite(dataset="{name: digitz}"), "unknown dataset 'digitz' (did you mean 'digits'?)"),
    "unknown_backbone": Case(suite(backbones="[resnet21]"), "unknown backbone 'resnet21'"),
    "unknown_variant": Case(suite(variants="[ubnn]"), "unknown variant 'ubnn' (did you mean 'ubn'?)"),
    "style_layer_as_backbone_norm": Case(suite(variants="[bn, adain]"), "variant 'adain' takes the style features as a second input (forward(x, style), conditioning 'style'), so it cannot be a backbone's norm_layer(C)"),
    "unknown_conditioning": Case(None, "conditioning must be absent or one of ['index', 'style'], got 'text'", command="variants", args=["--plugin", "cond.py"], files={"cond.py": CONDITIONED}),
    "style_task_on_a_classifier": Case(suite(task="style_transfer"), "task 'style_transfer' trains a backbone whose norm slots pass the style features, but backbone 'resnet20' passes plain norm layers (x alone)"),
    "classifier_on_a_style_network": Case(suite(backbones=STYLE_NET, variants="[adain]"), "task 'classification' trains a backbone whose norm slots pass plain norm layers (x alone), but backbone 'adain_vgg19' passes the style features (a style network: use task style_transfer)"),
    "plain_layer_in_a_style_slot": Case(suite(task="style_transfer", backbones=STYLE_NET, variants="[adain, bn]"), "variant 'bn' is not style-conditioned, but this norm slot passes the style features"),
    "style_encoder_weights_missing": Case(suite(task="style_transfer", backbones="[{name: adain_vgg19, options: {encoder_path: no/vgg.pth}}]", variants="[adain]"), "the VGG-19 encoder weights (vgg_normalised) are missing: put vgg_normalised.pth from pytorch-AdaIN's release v0.0.0 (github.com/naoto0804/pytorch-AdaIN) at no/vgg.pth"),
    "style_folder_missing": Case(suite(task="style_transfer", backbones=STYLE_NET, variants="[adain]", dataset="{name: style_folders, root: data, content_dir: coco, style_dir: art, test_content_dir: coco_val, test_style_dir: art_test}"), "/data/coco' does not exist"),
    "unknown_variant_option": Case(suite(variants=variant("thau: 0.1", "ubn")), "did you mean 'tau'"),
    "unknown_backbone_option": Case(suite(backbones="[{name: resnet20, options: {widht: 8}}]"), "did you mean 'width'"),
    "unknown_dataset_option": Case(suite(dataset="{name: digits, image_sise: 8}"), "image_sise"),
    "unknown_augment_option": Case(suite(dataset="{name: digits, augment: {flip: true}}"), "unknown augment option 'flip'"),
    "wrong_type_strict": Case(suite(train=train('nesterov: "yes"')), "train.nesterov: Input should be a valid boolean"),
    "yaml11_bool_is_a_string": Case(suite(train=train("nesterov: yes")), "train.nesterov: Input should be a valid boolean (got 'yes')"),
    "version_2": Case(suite(version="2"), "unsupported suite version 2"),
    "bad_name": Case(suite(name="'a/b'"), "name: String should match pattern"),
    "exclude_matches_nothing": Case(suite(exclude="[{variant: gn}]"), "this entry matches no cell"),
    "exclude_everything": Case(suite(exclude="[{variant: bn}]"), "exclude removes every cell"),
    "exclude_empty": Case(suite(exclude="[{}]"), "an exclude entry must give at least one"),
    "label_clash": Case(suite(variants="[{name: bn, label: x}, {name: gn, label: x}]"), "label 'x' is used by two different entries"),
    "milestones_cosine": Case(suite(train="{epochs: 10, schedule: cosine, milestones: [5]}"), "only apply to schedule multistep"),
    "search_bad_path": Case(suite(variants="[ubn]", search="{num_samples: 2, space: {variant_options.tua: {type: float, low: 0.1, high: 0.5}}}"), "did you mean 'tau'"),
    "search_low_high": Case(suite(variants="[ubn]", search="{num_samples: 2, space: {variant_options.tau: {type: float, low: 0.5, high: 0.1}}}"), "`low < high` must hold"),
    "missing_plugin": Case(suite(plugins="[missing_plugin.py]"), "does not exist"),
    # -- --set, --max-epochs, --limit-batches -------------------------------------------
    "set_unknown_key": Case(suite(), "--set train.epoch=2: train.epoch: unknown key 'epoch'", args=["--set", "train.epoch=2"]),
    "set_bad_value": Case(suite(), "--set train.lr=fast: train.lr", args=["--set", "train.lr=fast"]),
    "set_malformed": Case(suite(), "an override must look like key.path=value", args=["--set", "nokey"]),
    "set_python_tag": Case(suite(), "'!!python/object:os.system' is not allowed", args=["--set", "train.lr=!!python/object:os.system 1"]),
    "set_bad_yaml": Case(suite(), "is not valid YAML", args=["--set", "seeds=[0,"]),
    "set_seeds_huge": Case(suite(), "a seed count must be between 1 and 1000", args=["--set", "seeds=100000000000"]),
    "max_epochs_0": Case(suite(), "--max-epochs: must be a positive integer, but got 0", args=["--max-epochs", "0"]),
    "limit_batches_negative": Case(suite(), "--limit-batches: must be a positive integer, but got -1", args=["--limit-batches", "-1"]),
    "max_epochs_not_int": Case(suite(), "Invalid value for '--max-epochs'", args=["--max-epochs", "abc"]),
    # -- plugins that must not take the process down ---------------------------------------
    "plugin_sys_exit_suite": Case(suite(plugins="[exits.py]"), "failed to load: it called sys.exit(3)", files={"exits.py": EXITS}),
    "plugin_sys_exit_flag": Case(suite(), "failed to load: it called sys.exit(3)", args=["--plugin", "exits.py"], files={"exits.py": EXITS}),
    "not_utf8_with_plugin_flag": Case(suite(description="caf\xe9").encode("latin-1"), "not UTF-8 text", args=["--plugin", "ok.py"], files={"ok.py": "# registers nothing\n"}),
    "plugin_sys_exit_variants": Case(None, "exits.py' failed to load: it called sys.exit(3)", command="variants", args=["--plugin", "exits.py"], files={"exits.py": EXITS}),
    "plugin_keyboard_interrupt": Case(None, "failed to load: KeyboardInterrupt", command="variants", args=["--plugin", "ki.py"], files={"ki.py": "raise KeyboardInterrupt\n"}),
    "plugin_system_exit_raise": Case(None, "it called sys.exit('bye')", command="variants", args=["--plugin", "se.py"], files={"se.py": "raise SystemExit('bye')\n"}),
    "plugin_base_exception": Case(None, "failed to load: BaseException: odd", command="variants", args=["--plugin", "be.py"], files={"be.py": "raise BaseException('odd')\n"}),
    "plugin_syntax_error": Case(None, "failed to load: SyntaxError", command="variants", args=["--plugin", "syn.py"], files={"syn.py": "def (:\n"}),
    "plugin_import_error": Case(None, "ModuleNotFoundError: No module named 'no_such_module_x'", command="variants", args=["--plugin", "imp.py"], files={"imp.py": "import no_such_module_x\n"}),
    "plugin_hook_rule": Case(suite(variants=variant("k: 3", "corpus_norm"), plugins="[p.py]"), "variants[0].options.k: variant 'corpus_norm': k=3 cannot run at batch size 16", files={"p.py": PLUGIN_VARIANT}),
    "plugin_hook_raises": Case(suite(variants=variant("k: 0", "corpus_norm"), plugins="[p.py]"), "check_options failed: ZeroDivisionError", files={"p.py": PLUGIN_VARIANT}),
    "plugin_constructor_exits": Case(suite(variants=variant("k: 5", "corpus_norm"), plugins="[p.py]"), "rejects these options at a 16-channel layer of resnet20 (norm widths [16, 32, 64]): it called sys.exit('constructor exits')", files={"p.py": PLUGIN_VARIANT}),
    "plugin_without_global_stats": Case(suite(variants="[bn, corpus_norm]", plugins="[p.py]", train=train("devices: 2, stats_scope: global")), "variants[1]: variant 'corpus_norm' does not declare global_stats = True (moments all-reduced across devices), so it cannot run with stats_scope: global on several devices; use `stats_scope: device` or another variant", files={"p.py": PLUGIN_VARIANT}),
    "plugin_without_identity_affine": Case(suite(variants="[bn, odd_norm]", plugins="[p.py]", train=train("norm_decay_toward: identity")), "train.norm_decay_toward: variant 'odd_norm' cannot decay toward its identity affine (norm_decay_toward: identity) at a 16-channel layer of resnet20 (norm widths [16, 32, 64]): ValueError: its .weight (16, 2) is not a (C,) gamma and it has no decay_targets() hook", files={"p.py": PLUGIN_NO_IDENTITY}),
    "plugin_without_identity_affine_in_entry": Case(suite(variants="[bn, {name: odd_norm, recipe: {norm_decay_toward: identity}}]", plugins="[p.py]"), "variants[1].recipe.norm_decay_toward: variant 'odd_norm' cannot decay toward its identity affine", files={"p.py": PLUGIN_NO_IDENTITY}),
    "plugin_option_type": Case(suite(variants=variant("k: 2.5", "corpus_norm"), plugins="[p.py]"), "option 'k' expects an int like the default 2, but got 2.5", files={"p.py": PLUGIN_VARIANT}),
    "broken_plugin_alone_not_its_names": Case(suite(variants="[bn, my_norm]", plugins="[p.py]"), "plugins[0]: plugin", files={"p.py": "import no_such_module_x\n"}),
    # -- found by a new user's walk: a --set list's items at the flag; a detector's own widths
    "set_list_item_at_the_flag": Case(suite(variants="[bn,\n  gn]"), "SUITE: --set variants=[bn, {name: gn, lable: x}]: variants[1].lable: unknown key 'lable' (did you mean 'label'?); allowed keys: label, name, options, placement, recipe, weight_standardization", args=["--set", "variants=[bn, {name: gn, lable: x}]"], exact=True),
    "set_list_option_at_the_flag": Case(suite(variants="[bn,\n  gn]"), "SUITE: --set variants=[bn, {name: gn, options: {num_groups: 5}}]: variants[1].options.num_groups: variant 'gn': num_groups=5 does not divide the norm widths [16, 32, 64]; the layer would silently use gcd(G, C) there", args=["--set", "variants=[bn, {name: gn, options: {num_groups: 5}}]"], exact=True),
    "set_list_then_its_item": Case(suite(variants="[bn,\n  gn]"), "SUITE: --set variants=[bn, {name: gn, lable: x}]: variants[1].lable: unknown key 'lable' (did you mean 'label'?); allowed keys: label, name, options, placement, recipe, weight_standardization", args=["--set", "variants=[bn, {name: gn, lable: x}]", "--set", "variants.1.options.num_groups=8"], exact=True),
    "gn_groups_not_dividing_the_fpn": Case(suite(task=DETECTOR, dataset=CANVASES, backbones="[imagenet_resnet18]", variants=variant("num_groups: 64", "gn"), batch_sizes="[2]"), "SUITE:5: variants[0].options.num_groups: variant 'gn': num_groups=64 does not divide the norm widths [32]; the layer would silently use gcd(G, C) there; width 32: task detection's FPN and box head (task.options.width)", exact=True),
    "bgn_groups_not_dividing_the_mask_head": Case(suite(task=DETECTOR.replace("detection", "instance_segmentation").replace("32", "24"), dataset=CANVASES, backbones="[imagenet_resnet18]", variants=variant("num_groups: 16", "bgn"), batch_sizes="[2]"), "SUITE:5: variants[0].options.num_groups: variant 'bgn': num_groups=16 does not divide the norm widths [24]; the layer would silently use gcd(G, C) there; width 24: task instance_segmentation's FPN, box and mask heads (task.options.width)", exact=True),
    # -- found by a new user's walk: what an init_from run holds; a --set item that names no layer; the --option flag
    "init_from_matches_no_trial": Case(suite(variants="[gn]", train=train(f"init_from: {{run: {RUN_SMALL}, cell: {{seed: 0}}}}")), f"SUITE:7: train.init_from: init_from: 0 trials of {RUN_SMALL} have variant=gn, variant_options={{}}, backbone=resnet20, backbone_options={{}}, placement=everywhere, seed=0; its 8 trials have variant bn, ubn; give init_from.cell fields (seed, batch_size, dataset, ...) that pick exactly one", exact=True),
    "init_from_matches_several_trials": Case(suite(train=train(f"init_from: {{run: {RUN_SMALL}, cell: {{}}}}")), f"init_from: 4 trials of {RUN_SMALL} have variant=bn, variant_options={{}}, backbone=resnet20, backbone_options={{}}, placement=everywhere; they differ in seed 0, 1, 2, 3; give init_from.cell"),
    "set_list_item_not_a_layer": Case(suite(), "SUITE: --set variants=[bn, 3]: variants[1]: expected a layer name (e.g. gn) or a mapping {name: ..., options: {...}}, but got 3", args=["--set", "variants=[bn, 3]"], exact=True),
    "list_item_not_a_backbone": Case(suite(backbones="[resnet20, [x]]"), "SUITE:4: backbones[1]: expected a backbone name (e.g. resnet20) or a mapping {name: ..., options: {...}}, but got ['x']", exact=True),
    "train_option_mistyped": Case(None, "--option eps=abc: variant 'bn' option 'eps' expects a float like the default 1e-05, but got 'abc'; --backbone-option widht=3: backbone 'resnet20' has no option 'widht' (did you mean 'width'?)", args=["--variant", "bn", "--backbone", "resnet20", "--dataset", "digits", "--epochs", "1", "--option", "eps=abc", "--backbone-option", "widht=3"], command="train"),
    "train_groups_not_dividing_widths": Case(None, "--option num_groups=5: variant 'gn': num_groups=5 does not divide the norm widths [16, 32, 64]; the layer would silently use gcd(G, C) there", args=["--variant", "gn", "--backbone", "resnet20", "--dataset", "digits", "--epochs", "1", "--option", "num_groups=5"], command="train", exact=True),
    "baseline_not_a_variant": Case(suite(variants="[bn, {name: gn, label: GN32}]", baseline="gn32x"), "baseline: baseline 'gn32x' is not a variant of this suite (did you mean 'gn32'?); its variants: bn, gn32, gn"),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad input is refused before Ray starts: any ray.init fails the test."""
    ray = pytest.importorskip("ray")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started for a bad input")

    monkeypatch.setattr(ray, "init", refuse)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _argv(case: Case, path: Path, tmp_path: Path) -> list[str]:
    args = [a if not a.endswith(".py") else str(tmp_path / a) for a in case.args]
    if case.command == "variants":
        return ["variants", *args, "--json"]
    if case.command == "train":
        return ["train", *args]
    return ["run", str(path), "--output", str(tmp_path / "out"), "--dry-run", *args]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    registry._reset_all()  # plugin cases must not see each other's registrations
    monkeypatch.chdir(tmp_path)
    for rel, text in case.files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    path = tmp_path / "suite.yaml"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    elif case.text is not None:
        path.write_text(case.text, encoding="utf-8")
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(_argv(case, path, tmp_path))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert exit_.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("normbench: error: "), err
    assert "Traceback" not in err and case.expect.replace("SUITE", str(path)) in lines[0], lines[0]
    if case.exact:
        assert lines[0] == "normbench: error: " + case.expect.replace("SUITE", str(path))
    if case.command == "run" and case.text is not None and not case.args:
        assert f"{path}:" in lines[0] or "plugin file" in lines[0], lines[0]  # FILE:LINE
    assert _tree(tmp_path) == before
    registry._reset_all()


def test_exponent_numbers_are_floats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`lr: 1e-3` (YAML 1.1 reads it as a string) and `--set train.lr=5e-4` are numbers."""
    from normbench.suite.loader import load_suite

    path = tmp_path / "s.yaml"
    path.write_text(suite(train=train("lr: 1e-3, weight_decay: 5E-4")))
    spec = load_suite(path).trials()[0].spec
    assert spec.recipe.lr == 0.001 and spec.recipe.weight_decay == 0.0005
    spec = load_suite(path, overrides=["train.lr=5e-4"]).trials()[0].spec
    assert spec.recipe.lr == 0.0005
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(path), "--dry-run"])
    assert exit_.value.code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_alias_bomb_is_refused_within_a_small_memory_cap(tmp_path: Path) -> None:
    """Issue 15: a 1 KB suite of nested aliases grew past 3 GB. Under a 1 GiB address-space
    limit the whole CLI refuses it with one line (it stays near 0.4 GB of address space)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    cap = 1 << 30

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    code = "import sys; from normbench.cli import main; main(sys.argv[1:])"
    argv = [
        sys.executable,
        "-c",
        code,
        "run",
        str(path),
        "--dry-run",
        "--output",
        str(tmp_path / "o"),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        argv, preexec_fn=limit, capture_output=True, text=True, timeout=120, env=env
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and "expand the suite to more than 100000 values" in lines[0]
    assert f"{path}:7: (yaml)" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]


def test_adding_a_plugin_to_a_stored_suite_says_plugins_change_every_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run directory holds bn and gn; the suite then adds corpus_norm with
    `plugins: [my_norm.py]`: the rerun (and its --dry-run) is refused in one line that names
    the plugin as the cause, exit 2, the run directory untouched, Ray never started."""
    from normbench.results.store import RunStore
    from normbench.suite.loader import load_suite

    registry._reset_all()
    monkeypatch.chdir(tmp_path)
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(suite(variants="[bn, gn]"))
    (tmp_path / "my_norm.py").write_text(textwrap.dedent(PLUGIN_VARIANT))
    second.write_text(suite(variants="[bn, gn, corpus_norm]", plugins="[my_norm.py]"))
    run, stored_suite = tmp_path / "run", load_suite(first)
    with RunStore(run) as store:
        store.write_suite(stored_suite)
        for t in stored_suite.trials():
            store.finish_trial(t.trial_id, t.spec.to_dict(), t.cell, "completed")
    stored = sorted(t.trial_id for t in stored_suite.trials())[0]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for dry in ([], ["--dry-run"]):
        with pytest.raises(SystemExit) as exit_:
            main(["run", str(second), "--output", str(run), *dry])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and lines == [
            f"normbench: error: run directory {run} holds results of a different suite: the "
            "plugin files are part of every trial's identity: adding my_norm.py changes the ids "
            f"of all trials (stored trial {stored} among them); run the built-ins with the "
            "plugin listed from the start, or use another --output"
        ]
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    registry._reset_all()
