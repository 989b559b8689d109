"""Tasks beyond image classification. `normbench.tasks.detection` holds the building blocks of
object detection and instance segmentation (UBN Tables 5-6): COCO-format data, torchvision's
Faster R-CNN and Mask R-CNN with any norm layer, pycocotools evaluation, and an embedded data
set. They are not wired into the training loop yet: the task contract that will let
`run_trial` train them is a later step."""
