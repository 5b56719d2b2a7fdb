"""KV-sharing (the original's `KVSharingAdaLNMixin`, docs/method.md, "KV-sharing")."""
import torch

from ..pair_batch import PairBatch
from .control import AttentionController
from .kernels import attention


def source_rows(t: torch.Tensor) -> torch.Tensor:
    """The pair batch `t` with each target part replaced by its source: (u_s, u_s, c_s, c_s)."""
    return PairBatch.split(t).targets_as_sources().join()


class KVSharing(AttentionController):
    """In controlled steps and layers the target rows attend to the source rows' keys and values.

    Source rows keep ordinary attention, so one batched call with the keys/values of each target
    row swapped for its source's gives exactly the four per-branch attentions of the original.
    """

    # Below its first controlled layer it is plain attention and keeps no state, so those layers may
    # run once per window outside the source/target pair batch (MultiPromptDenoiser's work sharing).
    per_window_below_first_layer = True

    def __call__(self, q, k, v, layer: int, text_length: int) -> torch.Tensor:
        if not self.active(layer):
            return attention(q, k, v)
        return attention(q, source_rows(k), source_rows(v))
