"""The blocks together, without a script: a Faster R-CNN built with BN and one built with GN
(normbench's own layers, through `norm_layer`) train a few steps on the embedded `digits_coco`
canvases and their COCO box AP on the held-out canvases, by pycocotools, rises well above the
untrained detector's.

Cost: two detectors (ResNet-18 body, 32-channel FPN and heads, 48x48 canvases), each 100 steps
of 2 images (2.7 GFLOP a step, torch's FlopCounterMode) and two evaluations of 16 canvases:
about 580 GFLOP in all (marked slow): 8 s per detector on this 2-core machine idle (two
threads), 37-40 s at load average 13-18 (one thread, as the test runs). With
one thread BN reached box AP50 3.1 (untrained 0.0) and GN 4.3 (0.005); with two, 5.9 and 5.4
(the same steps, float sums in another order). The test asks for more than 1.0 and 10x the
untrained detector's.
"""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from pycocotools.coco import COCO

from normbench.data.coco import DetectionLoader, coco_dataset
from normbench.data.digits_coco import CanvasSpec, digits_coco
from normbench.tasks.detection.evaluate import evaluate_detector
from normbench.tasks.detection.models import build_detector, small_layout
from normbench.variants_api import norm_layer

pytestmark = pytest.mark.slow
SIZE, STEPS, VAL = 48, 100, 16
SPEC = CanvasSpec(n_train=2 * STEPS, n_val=VAL, size=SIZE, sides=(8, 18), seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: with two tests at a time on two cores (pytest -n 2), more threads
    only wait for each other (OpenMP barriers on tiny tensors slowed this test 40x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    files = digits_coco(SPEC, root=str(tmp_path_factory.mktemp("data")))
    train = coco_dataset(
        files.images("train"), files.annotations("train"), train=True, hflip=False, masks=False
    )
    val = coco_dataset(
        files.images("val"), files.annotations("val"), train=False, hflip=False, masks=False
    )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(files.annotations("val")))
    return train, DetectionLoader(val, batch_size=8, device="cpu", train=False), gt


@pytest.mark.parametrize(
    ("variant", "options"), [("bn", {}), ("gn", {"num_groups": 8})], ids=["bn", "gn"]
)
def test_a_detector_learns_the_canvases(variant: str, options: dict, data) -> None:
    train, val, gt = data
    torch.manual_seed(0)
    model = build_detector(
        "faster_rcnn",
        "resnet18",
        11,
        norm_layer(variant, **options),
        layout=small_layout(SIZE, width=32),
    )
    before = evaluate_detector(model, val, gt)["box_AP50"]
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    model.train()
    for images, targets in DetectionLoader(train, batch_size=2, device="cpu", train=True):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate_detector(model, val, gt)
    assert after["box_AP50"] > max(1.0, 10 * before), (before, after)
    assert after["box_AP"] > 0.0 and after["box_APl"] is None  # no digit is that large
