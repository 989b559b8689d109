"""What a backbone's norm slots pass besides x, and the task's rule that it agrees with what
the task trains (`task_rules`, the task door's own rule: normbench.options, step 3).

A task class may declare `norm_conditioning` (None, the default, for plain `norm_layer(C)`
slots; "style" for a style network's, forward(x, style)); a backbone factory declares the same
attribute (`normbench.models.registry.backbone_conditioning`). A classifier cannot train a
style network's backbone and the style transfer task cannot train a classifier: suite
validation says so in one line at the task's suite line.
"""

from __future__ import annotations

from typing import Any

from normbench.options import OptionProblem

SLOT_INPUTS = {None: "plain norm layers (x alone)", "style": "the style features"}


def task_rules(
    name: str, cls: Any, options: dict[str, Any], build: bool, context: dict[str, Any]
) -> list[OptionProblem]:
    """The tasks' own rule (normbench.options, step 3): the task and the backbone agree on what
    the backbone's norm slots pass besides x (the task's class attribute `norm_conditioning`,
    the factory's: None for a classifier, "style" for a style network such as adain_vgg19)."""
    from normbench.models.registry import backbone_conditioning

    backbone = context.get("backbone")
    if backbone is None:
        return []
    wants, has = getattr(cls, "norm_conditioning", None), backbone_conditioning(backbone)
    if wants == has:
        return []
    wanted, given = SLOT_INPUTS.get(wants, wants), SLOT_INPUTS.get(has, has)
    return [
        OptionProblem(
            f"task {name!r} trains a backbone whose norm slots pass {wanted}, "
            f"but backbone {backbone!r} passes {given}"
            + (" (a style network: use task style_transfer)" if has == "style" else "")
        )
    ]
