"""The embedded `digits_coco` canvases and COCO-format files read by torchvision's COCO loader:
annotations that agree with their pixels, deterministic files written once, polygons and RLE
turned into masks, flips applied to image, boxes and masks alike, and batches as torchvision's
detectors take them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from normbench.data.coco import DetectionLoader, coco_dataset
from normbench.data.digits_coco import CanvasSpec, digits_coco

SPEC = CanvasSpec(n_train=6, n_val=4, size=48, per_image=(2, 3), sides=(10, 20), seed=3)


@pytest.fixture(scope="module")
def canvases(tmp_path_factory: pytest.TempPathFactory):
    return digits_coco(SPEC, root=str(tmp_path_factory.mktemp("data")))


def test_annotations_agree_with_their_pixels(canvases) -> None:
    coco = json.loads(canvases.annotations("train").read_text())
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    assert len(coco["images"]) == 6
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image in coco["images"]:
        anns = by_image[image["id"]]
        assert 2 <= len(anns) <= 3
        pixels = np.asarray(Image.open(canvases.images("train") / image["file_name"]))
        assert pixels.shape == (48, 48, 3)
        union = np.zeros((48, 48), dtype=int)
        for ann in anns:
            m = mask_utils.decode(ann["segmentation"]).astype(bool)
            ys, xs = np.nonzero(m)  # the independent reference: numpy's tight box
            x0, y0 = xs.min(), ys.min()
            assert ann["bbox"] == [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]
            assert ann["area"] == m.sum() and 1 <= ann["category_id"] <= 10
            assert ann["iscrowd"] == 0
            union += m
            # the digit's pixels are ink (>= half of a colour >= 0.5 * 255), the rest noise
            assert pixels[m].max(axis=1).min() >= 60
        assert union.max() == 1  # digits never overlap
        assert pixels[union == 0].mean() < 40


def test_files_are_deterministic_and_written_once(canvases, tmp_path: Path) -> None:
    again = digits_coco(SPEC, root=str(tmp_path))
    for split in ("train", "val"):
        assert again.annotations(split).read_bytes() == canvases.annotations(split).read_bytes()
    first = sorted(canvases.images("val").iterdir())[0]
    assert (again.images("val") / first.name).read_bytes() == first.read_bytes()
    stamp = again.annotations("val").stat().st_mtime_ns
    assert digits_coco(SPEC, root=str(tmp_path)).annotations("val").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "digits_coco").iterdir()] == [SPEC.key]
    with pytest.raises(ValueError, match="sides"):
        CanvasSpec(size=16, sides=(10, 20))


def test_samples_are_what_detectors_take(canvases) -> None:
    ds = coco_dataset(
        canvases.images("val"), canvases.annotations("val"), train=False, hflip=False, masks=True
    )
    coco = json.loads(canvases.annotations("val").read_text())
    image, target = ds[0]
    first = coco["images"][0]
    pixels = np.asarray(Image.open(canvases.images("val") / first["file_name"]))
    assert image.dtype == torch.float32 and image.shape == (3, 48, 48)
    assert torch.allclose(image, torch.tensor(pixels).permute(2, 0, 1).float() / 255)
    anns = [a for a in coco["annotations"] if a["image_id"] == first["id"]]
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
    assert target["boxes"].tolist() == xyxy and target["image_id"] == first["id"]
    assert target["labels"].tolist() == [a["category_id"] for a in anns]
    assert target["masks"].shape == (len(anns), 48, 48)
    assert target["masks"].sum(dim=(1, 2)).tolist() == [a["area"] for a in anns]


def write_coco(tmp_path: Path) -> tuple[Path, Path]:
    """Two 40x50 images in COCO's own format: image 1 has one object with a polygon (COCO's
    format for single objects), image 2 none."""
    (tmp_path / "img").mkdir()
    for i in (1, 2):
        px = np.full((40, 50, 3), 10 * i, dtype=np.uint8)
        px[10:20, 10:30] = 200  # the object of image 1
        Image.fromarray(px).save(tmp_path / "img" / f"{i}.jpg", quality=100)
    ann = {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 10], "area": 200,
           "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]], "iscrowd": 0}  # fmt: skip
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 50, "height": 40} for i in (1, 2)],
        "annotations": [ann],
        "categories": [{"id": 7, "name": "seven"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    return tmp_path / "img", tmp_path / "instances.json"


def test_polygons_empty_images_and_flips(tmp_path: Path) -> None:
    images, annotations = write_coco(tmp_path)
    ds = coco_dataset(images, annotations, train=False, hflip=True, masks=True)
    _, target = ds[0]
    mask = torch.zeros(40, 50, dtype=torch.uint8)
    mask[10:20, 10:30] = 1  # pycocotools fills the polygon's pixels [10, 30) x [10, 20)
    assert torch.equal(target["masks"][0], mask)
    _, empty = ds[1]  # no annotations: empty boxes, labels and masks of the image's size
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["masks"].shape == (0, 40, 50) and empty["image_id"] == 2
    train = coco_dataset(images, annotations, train=True, hflip=True, masks=True)
    flipped = []
    for seed in range(8):  # p = 0.5 per sample: some seeds flip, some do not
        torch.manual_seed(seed)
        image, t = train[0]
        flipped.append(t["boxes"].tolist() == [[20.0, 10.0, 40.0, 20.0]])  # x -> 50 - x
        if flipped[-1]:
            assert torch.equal(t["masks"][0], mask.flip(-1))
            assert image[:, 15, 20:40].min() > 0.7 and image[:, 15, 10:20].max() < 0.3
        else:
            assert t["boxes"].tolist() == [[10.0, 10.0, 30.0, 20.0]]
    assert any(flipped) and not all(flipped)


def test_loader_batches_lists_on_the_device(canvases) -> None:
    ds = coco_dataset(
        canvases.images("train"), canvases.annotations("train"), train=True, hflip=True,
        masks=False,
    )  # fmt: skip
    loader = DetectionLoader(ds, batch_size=4, device="cpu", train=True, seed=1)
    assert len(loader) == 1  # 6 images: one full batch, the rest dropped
    images, targets = next(iter(loader))
    assert len(images) == len(targets) == 4 and images[0].shape == (3, 48, 48)
    assert set(targets[0]) == {"image_id", "boxes", "labels", "area", "iscrowd"}
    loader.set_epoch(0)
    again, again_targets = next(iter(loader))  # the same epoch: the same images and flips
    assert all(torch.equal(a, b) for a, b in zip(images, again, strict=True))
    assert [t["image_id"] for t in targets] == [t["image_id"] for t in again_targets]
    later, _ = next(iter(loader))  # epoch 1: another order
    evaluation = DetectionLoader(ds, batch_size=4, device="cpu", train=False)
    assert len(evaluation) == 2 and sum(len(b[0]) for b in evaluation) == 6
    assert not all(torch.equal(a, b) for a, b in zip(images, later, strict=True))
