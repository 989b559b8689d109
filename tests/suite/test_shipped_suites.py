"""The suites under suites/ validate, expand to the paper's matrices and carry its numbers.

Expected values are written here from the UBN paper's tables (the recipes the suites claim),
not read from the suite files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from normbench.spec import Recipe
from normbench.suite.describe import describe
from normbench.suite.loader import load_suite

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from style_files import write_vgg_normalised  # noqa: E402

SUITES = Path(__file__).resolve().parents[2] / "suites"
BUILTINS = {"bn", "in", "gn", "iebn", "rbn", "bnet", "sabn", "bgn", "ghost_bn", "ubn", "fourthings"}

EXPECTED_TRIALS = {
    "quickstart": 11 * 3,
    "cifar100_table3": (7 + 2 * 5) * 3,
    "cifar10_table4": 5 * 2 * 3,
    "batch_size_ablation": 3 * 5,
    "batch_size_ablation_cifar100": 2 * 5,
    "small_batch": 5 * 4 * 3,
    "fct_search": 1,
    "ubn_ablation": 2 * 5 * 3,
    "ubn_fct_values": 7 * 3,
    "batch_size_bn_vs_ubn": 3 * 2 * 5,
    "ubn_time_to_bn": 3 * 2 * 3,
    "fourthings": 7 * 3 + 6 * 3,
    "sabn_adversarial": 3 * 3,
    "bgn_small_batch": 4 * 2 * 3,
    "imagenet_table2": 3 * 2,
    "imagenet_table2_resnet50": 2,
    "modern_norms": 2 * 11 * 3,
    "modern_norms_digits": 3 * 11 * 3,
    "detection_digits": 4 * 3,
    "coco_table5_faster_rcnn": 2 * 2,
    "coco_table6_mask_rcnn": 2 * 2,
    "sabn_gan": 2 * 3,
    "sabn_style_transfer": 2 * 3,
    "sabn_nas": 2 * 3,
}

TABLE3 = {  # (backbone, variant): (top-1, top-5), UBN Table 3
    ("resnet50", "in"): (77.68, 94.20),
    ("resnet50", "gn"): (51.71, 78.55),
    ("resnet50", "bn"): (77.02, 93.87),
    ("resnet50", "iebn"): (78.13, 94.39),
    ("resnet50", "rbn"): (77.79, 94.28),
    ("resnet50", "bnet"): (77.68, 94.16),
    ("resnet50", "ubn"): (78.67, 94.40),
    ("resnet101", "bn"): (77.18, 93.87),
    ("resnet101", "ubn"): (78.48, 94.28),
    ("resnet152", "bn"): (77.87, 94.40),
    ("resnet152", "ubn"): (78.28, 94.38),
    ("resnext50", "bn"): (77.49, 93.69),
    ("resnext50", "ubn"): (77.81, 94.46),
    ("vgg13", "bn"): (71.03, 90.53),
    ("vgg13", "ubn"): (71.37, 91.06),
    ("inceptionv4", "bn"): (75.60, 92.83),
    ("inceptionv4", "ubn"): (76.51, 93.53),
}
TABLE4 = {
    "resnet18": (93.65, 93.80),
    "resnet34": (93.02, 93.98),
    "resnet50": (92.26, 94.32),
    "resnet101": (93.19, 94.56),
    "vgg11": (91.14, 91.48),
}
TABLE7 = {
    ("cifar10", "resnet18"): (94.45, 94.90, 94.32, 93.79, 93.38),
    ("cifar10", "resnet34"): (95.51, 94.73, 94.54, 94.34, 93.78),
    ("cifar10", "resnet50"): (95.39, 94.59, 94.58, 94.57, 94.13),
    ("cifar100", "resnet50"): (78.02, 78.52, 78.99, 78.86, 77.21),
    ("cifar100", "resnet101"): (77.53, 78.27, 79.33, 78.03, 77.87),
}


@pytest.fixture(scope="module", autouse=True)
def torch_home(tmp_path_factory: pytest.TempPathFactory):
    """The style suite's encoder file where torch's hub cache is (a stand-in: its keys and
    shapes), for loading and describing the suite."""
    home = tmp_path_factory.mktemp("torch")
    write_vgg_normalised(home / "hub" / "checkpoints" / "vgg_normalised.pth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def loaded():
    return {p.stem: load_suite(p) for p in sorted(SUITES.glob("*.yaml"))}


def test_every_suite_validates_and_expands(loaded):
    assert set(loaded) == set(EXPECTED_TRIALS)
    for name, suite in loaded.items():
        assert suite.name == name
        trials = suite.trials()
        assert len(trials) == EXPECTED_TRIALS[name], name
        assert len({t.trial_id for t in trials}) == len(trials), name
        text = describe(suite)
        task = suite.task.get("name", "classification")
        said = f"no cost estimate: task {task!r} counts no cost: " in text
        count = "\n1 trial\n" if len(trials) == 1 else f"\n{len(trials)} trials\n"
        assert count in text and ("estimated time" in text) != said, name
        assert said == (task not in ("classification", "adversarial")), name


def test_every_suite_has_a_header_comment():
    for p in SUITES.glob("*.yaml"):
        head = p.read_text().split("\nversion:")[0]
        assert head.startswith(f"# {p.stem}:"), p
        assert "Expected cost" in head and ("Recipe" in head or "recipe" in head), p


def test_quickstart_covers_every_builtin(loaded):
    trials = loaded["quickstart"].trials()
    assert {t.spec.variant for t in trials} == BUILTINS
    assert {t.spec.seed for t in trials} == {0, 1, 2}
    ghost = [t.spec for t in trials if t.spec.variant == "ghost_bn"]
    assert ghost[0].batch_size == 64 and ghost[0].variant_options["ghost_batch_size"] == 16
    assert {t.spec.device for t in trials} == {"auto"}  # a GPU when the suite asks Ray for one
    assert loaded["quickstart"].resources.cpus == 1 and loaded["quickstart"].max_concurrent == 2


def test_table3_matrix_recipe_and_references(loaded):
    suite = loaded["cifar100_table3"]
    cells = {(t.spec.backbone, t.spec.variant) for t in suite.trials()}
    assert cells == set(TABLE3)
    spec = suite.trials()[0].spec
    assert spec.recipe == Recipe(
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        warmup_epochs=1.0,
        schedule="multistep",
        milestones=(60, 120, 160),
        gamma=0.2,
    )
    assert (spec.epochs, spec.batch_size, spec.dataset) == (200, 128, "cifar100")
    assert spec.dataset_options["augment"]["rotation"] == 15
    placement = {t.spec.variant: t.spec.placement for t in suite.trials()}
    assert placement["iebn"] == "except-shortcut" and placement["bnet"] == "everywhere"
    rows = {
        (r["backbone"], r["variant"]): (r["top1"], r["top5"])
        for r in suite.reference
        if r["source"] == "UBN Table 3"
    }
    assert rows == TABLE3


def test_table4_recipe_and_references(loaded):
    suite = loaded["cifar10_table4"]
    spec = suite.trials()[0].spec
    assert spec.recipe == Recipe(
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        warmup_epochs=0.0,
        schedule="multistep",
        milestones=(100, 150),
        gamma=0.1,
    )
    assert (spec.epochs, spec.batch_size, spec.dataset) == (200, 128, "cifar10")
    got = {}
    for r in suite.reference:
        got.setdefault(r["backbone"], {})[r["variant"]] = r["top1"]
    assert {b: (v["bn"], v["ubn"]) for b, v in got.items()} == TABLE4


def test_table7_batch_sizes_and_references(loaded):
    for name in ("batch_size_ablation", "batch_size_ablation_cifar100"):
        suite = loaded[name]
        sizes = sorted({t.spec.batch_size for t in suite.trials()})
        assert sizes == [32, 64, 128, 256, 512]
        assert {t.spec.recipe.lr for t in suite.trials()} == {0.1}  # no lr scaling stated
        for r in suite.reference:
            key = (r["dataset"], r["backbone"])
            assert r["top1"] == TABLE7[key][sizes.index(r["batch_size"])]
        assert len(suite.reference) == 5 * len({t.spec.backbone for t in suite.trials()})


def test_small_batch_and_search(loaded):
    small = loaded["small_batch"].trials()
    assert sorted({t.spec.batch_size for t in small}) == [2, 4, 8, 16]
    lr = {t.spec.batch_size: t.spec.recipe.lr for t in small}
    assert lr == {2: 0.05 * 2 / 16, 4: 0.05 * 4 / 16, 8: 0.05 * 8 / 16, 16: 0.05}
    search = loaded["fct_search"].search
    tau = search.space["variant_options.tau"]
    assert (tau["low"], tau["high"]) == (0.05, 0.7)  # reaches where UBN freezes (0.3-0.6)
    assert search.scheduler == "asha" and search.metric == "val_top1"
    assert loaded["fct_search"].trials()[0].spec.dataset_options["val_fraction"] > 0


def test_describe_counts_images(loaded):
    # digits: 1437 training images before the 10% validation carve -> 1293 per epoch, 144
    # validation and 360 test images evaluated every epoch; quickstart: 5 epochs x 33 trials.
    text = describe(loaded["quickstart"])
    assert f"estimated images: {5 * 1293 * 33:.3g} trained" in text
    assert f"{5 * (144 + 360) * 33:.3g} evaluated" in text
    smoke = describe(load_suite(SUITES / "quickstart.yaml", limit_batches=2, max_epochs=1))
    assert f"estimated images: {1 * 2 * 64 * 33:.3g} trained" in smoke
    assert f"{1 * (144 + 360) * 33:.3g} evaluated" in smoke


def test_ubn_suites_set_the_papers_switches(loaded):
    rows = {t.cell["variant"]: t.spec.variant_options for t in loaded["ubn_ablation"].trials()}
    keys = ("fct", "norm_rect", "affine_rect")
    switches = {k: tuple(v[s] for s in keys) for k, v in rows.items()}
    assert switches == {  # UBN Sec 4.3.1 / Fig. 5
        "bn": (False, False, False),
        "bn+stats": (True, False, False),
        "bn+norm_rect": (False, True, False),
        "bn+affine_rect": (False, False, True),
        "ubn": (True, True, True),
    }
    for name in ("ubn_ablation", "ubn_fct_values", "batch_size_bn_vs_ubn", "ubn_time_to_bn"):
        ubn = [t.spec for t in loaded[name].trials() if t.spec.variant == "ubn"]
        assert ubn and {s.variant_options["decide"] for s in ubn} == {"epoch"}, name
    taus = {t.spec.variant_options.get("tau") for t in loaded["ubn_fct_values"].trials()}
    assert {0.15, 0.3, 0.4, 0.5} <= taus  # the paper's value and values that freeze layers
    # Table 8's target is BN's final top-1 in the same run: no suite target, no BN reference
    time_to_bn = loaded["ubn_time_to_bn"]
    assert time_to_bn.target_accuracy is None
    assert {r["variant"] for r in time_to_bn.reference} == {"ubn"}
    refs = loaded["batch_size_bn_vs_ubn"].reference
    ref = {(r["backbone"], r["batch_size"]): r["top1"] for r in refs}
    assert ref == {
        (b, size): TABLE7[("cifar10", b)][i]
        for b in ("resnet18", "resnet34", "resnet50")
        for i, size in enumerate((32, 64, 128, 256, 512))
    }


def test_fourthings_cell_groups(loaded):
    trials = loaded["fourthings"].trials()
    by_label = {}
    for t in trials:
        by_label.setdefault(t.cell["variant"], set()).add(t.spec.batch_size)
    assert by_label["ghost16"] == by_label["bn_decay_to_1"] == {128}
    assert by_label["batch_group"] == by_label["gn32"] == {2, 4}
    decay = {t.cell["variant"]: t.spec.recipe for t in trials if t.spec.batch_size == 128}
    assert decay["bn_no_norm_decay"].norm_weight_decay == 0.0
    assert decay["bn_decay_to_1"].norm_decay_toward == "identity"
    assert decay["bn"].norm_weight_decay is None and decay["bn"].norm_decay_toward == "zero"
    assert all(t.spec.dataset_options["val_fraction"] > 0 for t in trials)  # alpha is tuned on val


def test_cifar10_suites_do_not_rotate(loaded):
    # The UBN paper states random cropping (and flipping) for CIFAR-10; RandomRotation(15) comes
    # from the pytorch-cifar100 code behind its CIFAR-100 recipe only (CIFAR10_AUGMENT has none).
    cifar10 = [s for s in loaded.values() if s.trials()[0].spec.dataset == "cifar10"]
    assert cifar10
    for suite in cifar10:
        for t in suite.trials():
            assert (t.spec.dataset_options.get("augment") or {}).get("rotation", 0) == 0, suite.name


MODERN = {"bn", "gn", "gn+ws", "layernorm2d", "rmsnorm2d", "frn", "evonorm_b0", "evonorm_s0",
          "dyt", "brn", "ubn"}  # fmt: skip


@pytest.mark.parametrize("name", ["modern_norms", "modern_norms_digits"])
def test_modern_norms_rows_and_per_layer_choices(loaded, name):
    """The issue's rows on ResNet and a ConvNeXt; GN+WS in the same backbone's table as BN;
    DyT's official no-decay; the DyT-on-ResNet finding in the header; the digits twin also
    has ResNet-20's pre-activation form, the one EvoNorm's official code builds."""
    trials = loaded[name].trials()
    assert {t.cell["variant"] for t in trials} == MODERN
    backbones = {t.spec.backbone for t in trials}
    assert len(backbones) == 2 and any(b.startswith("convnext") for b in backbones)
    for t in trials:
        ws = t.spec.backbone_options.get("weight_standardization", False)
        assert ws is (t.cell["variant"] == "gn+ws"), t.cell
        preact = t.spec.backbone_options.get("preact", False)
        label = "preact_resnet20" if preact else t.spec.backbone
        assert t.cell["backbone"] == label  # one table per backbone, WS included
        if t.spec.variant == "dyt":
            assert t.spec.recipe.norm_weight_decay == 0.0
        else:
            assert t.spec.recipe.norm_weight_decay is None
    head = (SUITES / f"{name}.yaml").read_text().split("\nversion:")[0]
    assert "76.2 -> 68.9" in head and "App. D" in head
    tables = {t.cell["backbone"] for t in trials}
    assert ("preact_resnet20" in tables) is (name == "modern_norms_digits")


def test_modern_norms_recipes(loaded):
    cifar = loaded["modern_norms"].trials()[0].spec
    assert (cifar.dataset, cifar.epochs, cifar.batch_size) == ("cifar100", 200, 128)
    assert cifar.recipe.milestones == (60, 120, 160) and cifar.recipe.gamma == 0.2
    brn = [t.spec for t in loaded["modern_norms"].trials() if t.spec.variant == "brn"]
    assert all(s.variant_options == {} for s in brn)  # the paper's 5k/40k/25k warm-up
    digits = [t.spec for t in loaded["modern_norms_digits"].trials() if t.spec.variant == "brn"]
    # 5 epochs of ceil(1293 / 64) = 21 batches: relaxed after one epoch, done before the end;
    # one pair of moving averages (the paper's)
    assert digits[0].variant_options == {
        "relax_from": 20,
        "rmax_at": 60,
        "dmax_at": 50,
        "renorm_momentum": 0.1,
    }


# UBN Tables 5-6 (AP, AP50, AP75, APs, APm, APl), COCO's column order, written from the paper
TABLE5 = {
    ("imagenet_resnet50", "bn"): (33.1, 53.2, 35.6, 18.4, 35.8, 43.6),
    ("imagenet_resnet50", "ubn"): (37.7, 58.6, 40.5, 20.8, 40.9, 49.5),
    ("imagenet_resnet101", "bn"): (31.9, 51.4, 34.1, 17.6, 34.5, 42.2),
    ("imagenet_resnet101", "ubn"): (37.6, 58.2, 40.1, 20.7, 40.7, 50.4),
}
TABLE6_BOX = {
    ("imagenet_resnet50", "bn"): (34.0, 54.0, 36.6, 18.5, 36.9, 44.5),
    ("imagenet_resnet50", "ubn"): (38.5, 59.3, 41.6, 21.3, 41.9, 50.5),
    ("imagenet_resnet101", "bn"): (33.1, 52.5, 35.7, 17.8, 35.8, 44.0),
    ("imagenet_resnet101", "ubn"): (38.6, 59.1, 41.4, 22.3, 41.6, 51.8),
}
TABLE6_MASK = {
    ("imagenet_resnet50", "bn"): (31.1, 50.8, 33.0, 13.5, 33.1, 46.4),
    ("imagenet_resnet50", "ubn"): (34.8, 56.1, 36.8, 15.6, 37.3, 50.7),
    ("imagenet_resnet101", "bn"): (30.3, 49.4, 32.0, 12.7, 31.8, 45.7),
    ("imagenet_resnet101", "ubn"): (34.6, 55.8, 36.6, 16.5, 36.6, 51.2),
}
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@pytest.mark.parametrize(
    ("name", "task", "tables"),
    [("coco_table5_faster_rcnn", "detection", {"box": TABLE5}),
     ("coco_table6_mask_rcnn", "instance_segmentation", {"box": TABLE6_BOX, "mask": TABLE6_MASK})],
)  # fmt: skip
def test_coco_tables_recipe_and_references(loaded, name, task, tables):
    suite = loaded[name]
    spec = suite.trials()[0].spec
    assert (spec.task, spec.dataset, spec.epochs, spec.batch_size, spec.devices) == (
        task, "coco", 12, 2, 8,
    )  # fmt: skip
    assert spec.recipe == Recipe(
        lr=0.02, momentum=0.9, weight_decay=1e-4, warmup_epochs=0.0, schedule="multistep",
        milestones=(8, 11), gamma=0.1,
    )  # fmt: skip
    assert spec.dataset_options["masks"] == (task == "instance_segmentation")
    rows = {(r["backbone"], r["variant"]): r["metrics"] for r in suite.reference}
    for prefix, table in tables.items():
        got = {cell: tuple(m[f"{prefix}_{s}"] for s in COCO_STATS) for cell, m in rows.items()}
        assert got == table


def test_sabn_style_transfer_recipe(loaded):
    """SaBN's NST/train.py: Adam 1e-4, lr / (1 + 5e-5 t), batch 8, content + 10 style, 256
    crops of 512 resizes, COCO and WikiArt folders; 11 epochs ~ its 160,000 iterations."""
    trials = loaded["sabn_style_transfer"].trials()
    assert {t.spec.variant for t in trials} == {"adain", "saadain"}
    spec = trials[0].spec
    assert spec.recipe == Recipe(
        optimizer="adam", lr=1e-4, weight_decay=0.0, schedule="inverse_time", lr_decay=5e-5
    )
    assert (spec.task, spec.task_options) == (
        "style_transfer",
        {"content_weight": 1.0, "style_weight": 10.0},
    )
    assert (spec.batch_size, spec.backbone, spec.dataset) == (8, "adain_vgg19", "style_folders")
    data = spec.dataset_options
    assert (data["image_size"], data["load_size"], data["content_dir"]) == (
        256,
        512,
        "coco/train2017",
    )
    iterations = spec.epochs * (118_287 - round(0.01 * 118_287)) // 8
    assert abs(iterations - 160_000) < 160_000 * 0.02
    assert not loaded["sabn_style_transfer"].reference  # the paper gives curves, no numbers


SABN_ADV = {  # variant: (adv-branch SA, PGD-10 RA, PGD-20 RA, clean-branch SA), SaBN Sec 4.3
    "bn": (84.84, 41.57, 40.02, 84.84),
    "auxbn": (83.42, 43.05, 41.60, 94.47),
    "saauxbn": (84.08, 44.93, 43.14, 94.62),
}


def test_sabn_adversarial_recipe_and_references(loaded):
    suite = loaded["sabn_adversarial"]
    trials = suite.trials()
    spec = trials[0].spec
    assert spec.task == "adversarial"
    assert spec.task_options == {"eps": 8, "step_size": 2, "train_steps": 7, "random_start": True}
    assert spec.recipe == Recipe(
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        warmup_epochs=0.57,
        schedule="multistep",
        milestones=(50, 150),
        gamma=0.1,
    )
    # the official warm-up's 200 batches, of 45,000 / 128 = 351 training batches per epoch
    assert round(spec.recipe.warmup_epochs * (45_000 // 128)) == 200
    assert (spec.epochs, spec.batch_size, spec.dataset, spec.backbone) == (
        200, 128, "cifar10", "preact_resnet18"
    )  # fmt: skip
    assert spec.dataset_options["val_fraction"] == 0.1
    assert {t.spec.variant for t in trials} == set(SABN_ADV)
    for t in trials:
        if t.spec.variant != "bn":
            assert t.spec.variant_options["num_branches"] == 2
    keys = ("adv_sa", "adv_pgd10_ra", "adv_pgd20_ra", "clean_sa")
    got = {r["variant"]: tuple(r["metrics"][k] for k in keys) for r in suite.reference}
    assert got == SABN_ADV
