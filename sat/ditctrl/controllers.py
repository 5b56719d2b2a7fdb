"""The one registry of attention controllers: what each reads and needs, without importing torch.

Keyed by the original's mixin names (`adaln_mixin_names`). The run's checks (config.py, entry_points.py)
and the controller classes (attention/__init__.py) are derived from it.
"""
from dataclasses import dataclass

SOURCE_PROMPTS, TARGET_PROMPTS, ALL_PROMPTS = "source", "target", "all"


@dataclass(frozen=True)
class ControllerSpec:
    class_name: str              # in ditctrl.attention
    batch: str                   # "pair": (u_source, u_target, c_source, c_target) batches; "clip": [uncond; cond] of one clip
    keys: tuple = ()             # args keys it reads besides the step/layer schedule
    token_keys: tuple = ()       # (args key, prompts whose tokens it indexes: SOURCE_PROMPTS, TARGET_PROMPTS, ALL_PROMPTS)
    step_keys: tuple = ("step_idx",)    # index lists checked against the sampler's step count
    layer_keys: tuple = ("layer_idx",)  # index lists checked against the DiT's depth
    equal_token_counts: bool = False  # its token index must name the same word in every prompt
    # the original counted its steps by `is_edit` (one per forward, or one per window-pair sweep), not per forward
    steps_by_is_edit: bool = False


SCHEDULE_KEYS = ("start_step", "end_step", "start_layer", "end_layer", "step_idx", "layer_idx")


def scheduled(args) -> tuple[frozenset, frozenset]:
    """The (steps, layers) the schedule keys name: explicit `step_idx` / `layer_idx` lists win over the half-open
    start/end ranges."""
    steps = args.step_idx if args.step_idx is not None else range(args.start_step, args.end_step)
    layers = args.layer_idx if args.layer_idx is not None else range(args.start_layer, args.end_layer)
    return frozenset(int(s) for s in steps), frozenset(int(l) for l in layers)

CONTROLLERS = {
    "BaseAdaLNMixin": ControllerSpec("AttentionController", "pair", step_keys=(), layer_keys=()),
    "KVSharingAdaLNMixin": ControllerSpec("KVSharing", "pair", SCHEDULE_KEYS, steps_by_is_edit=True),
    "KVSharingMaskGuidedAdaLNMixin": ControllerSpec(
        "MaskGuidedKVSharing", "pair", (*SCHEDULE_KEYS, "thres", "ref_token_idx", "cur_token_idx", "mask_save_dir"),
        token_keys=(("ref_token_idx", SOURCE_PROMPTS), ("cur_token_idx", TARGET_PROMPTS)), steps_by_is_edit=True),
    "ReferenceAttentionAdaLNMixin": ControllerSpec("ReferenceAttention", "pair", SCHEDULE_KEYS),
    "ReWeightAdaLNMixin": ControllerSpec(
        "TokenReweighting", "pair",
        (*SCHEDULE_KEYS, "reweight_token_idx", "reweight_scale", "reweight_kv_switch_step", "reweight_additive"),
        token_keys=(("reweight_token_idx", ALL_PROMPTS),), equal_token_counts=True),
    "VisualizeAdaLNMixin": ControllerSpec(
        "AttentionVisualizer", "clip", ("attn_map_step_idx", "attn_map_layer_idx", "attn_map_token_idx"),
        token_keys=(("attn_map_token_idx", ALL_PROMPTS),), step_keys=("attn_map_step_idx",),
        layer_keys=("attn_map_layer_idx",)),
}
