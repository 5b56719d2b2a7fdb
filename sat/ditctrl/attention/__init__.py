"""Attention controllers, selected by the original's mixin names in `adaln_mixin_names` (registry: controllers.py)."""
from ..controllers import CONTROLLERS as CONTROLLER_SPECS
from .control import AttentionController, ControlSchedule
from .kv_sharing import KVSharing
from .mask_guided import MaskGuidedKVSharing
from .reference import ReferenceAttention
from .reweight import TokenReweighting
from .visualize import AttentionVisualizer

__all__ = ["AttentionController", "ControlSchedule", "KVSharing", "MaskGuidedKVSharing", "ReferenceAttention",
           "TokenReweighting", "AttentionVisualizer", "CONTROLLERS", "build_controller"]

CONTROLLERS = {name: globals()[spec.class_name] for name, spec in CONTROLLER_SPECS.items()}


def build_controller(name: str, args, output_dir: str, prompt_pieces=()) -> AttentionController:
    """The controller registered under the original's mixin `name`, configured from the run's args; `prompt_pieces`:
    each prompt's T5 pieces by token index, where known (labels of the figures)."""
    if name not in CONTROLLERS:
        raise ValueError(f"unknown attention controller {name!r}; known: {sorted(CONTROLLERS)}")
    return CONTROLLERS[name].from_args(args, output_dir, prompt_pieces)
