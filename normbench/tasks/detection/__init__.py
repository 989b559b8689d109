"""Object detection and instance segmentation building blocks (torch, torchvision, pycocotools).

- `canvas`: `digits_coco`, scikit-learn's digits placed on canvases, written in COCO format.
- `data`: COCO-format files read by torchvision's COCO loader, batched for its detectors.
- `models`: Faster R-CNN and Mask R-CNN with FPN, a norm layer everywhere the v2 models have one.
- `evaluate`: COCO box and mask AP by pycocotools.
"""
