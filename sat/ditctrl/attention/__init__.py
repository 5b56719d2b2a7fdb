"""Attention controllers, selected by the original's mixin names in `adaln_mixin_names`."""
from .control import AttentionController, ControlSchedule
from .kv_sharing import KVSharing

CONTROLLERS = {
    "BaseAdaLNMixin": AttentionController,
    "KVSharingAdaLNMixin": KVSharing,
}
