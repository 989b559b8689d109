"""Tasks: what a trial trains and how it is scored (the contract: `normbench.contract.TaskClass`
and `Scoring`; docs/tasks.md). `TASKS` is their registry, a kind like variants and backbones;
`classification` and `darts` (SaBN's architecture search, `normbench.tasks.nas`) are built in.
`base` holds the types a task's methods take and return.

`normbench.tasks.detection` holds object detection and instance segmentation (UBN Tables
5-6), the built-in tasks `detection` and `instance_segmentation`: torchvision's Faster R-CNN
and Mask R-CNN with any norm layer, scored by pycocotools (their COCO-format data sets are in
`normbench.data.coco` and `normbench.data.digits_coco`).
"""

from normbench.tasks.base import Batch, EvalContext, ModelContext, Step
from normbench.tasks.registry import (
    BUILTIN_TASKS,
    TASKS,
    create_task,
    register_task,
    task_norm_widths,
)

__all__ = [
    "BUILTIN_TASKS", "TASKS", "Batch", "EvalContext", "ModelContext", "Step", "create_task",
    "register_task", "task_norm_widths",
]  # fmt: skip
