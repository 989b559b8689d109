"""Object detection and instance segmentation (torch, torchvision, pycocotools).

- `task`: the `detection` and `instance_segmentation` tasks.
- `models`: Faster R-CNN and Mask R-CNN with FPN, a norm layer everywhere the v2 models have one.
- `evaluate`: COCO box and mask AP by pycocotools.

Their data (COCO-format files, the embedded `digits_coco`) is in `normbench.data.coco` and
`normbench.data.digits_coco`.
"""
