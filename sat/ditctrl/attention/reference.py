"""Reference attention (the diffusers community CogVideoX DDIM-inversion pipeline's attention processor)."""
import torch

from ..pair_batch import PairBatch
from .control import AttentionController
from .kernels import attention


class ReferenceAttention(AttentionController):
    """In controlled steps and layers each target row attends over its own keys and values followed by its
    source row's (the sequence doubled: the target's text and video, then the source's); source rows keep
    ordinary attention.

    Where KV-sharing replaces the target's keys and values by the source's, this adds the source's to them: the
    target can take the source's appearance and layout where its queries match them and keep its own elsewhere.
    The diffusers pipeline applies it in every layer at every step, with the inverted video as the source.
    """

    # Below its first controlled layer it is plain attention and keeps no state (see KVSharing).
    per_window_below_first_layer = True

    def __call__(self, q, k, v, layer: int, text_length: int) -> torch.Tensor:
        if not self.active(layer):
            return attention(q, k, v)
        qs, ks, vs = (PairBatch.split(t) for t in (q, k, v))
        sources = attention(qs.sources(), ks.sources(), vs.sources())
        targets = attention(qs.targets(), torch.cat([ks.targets(), ks.sources()], dim=2),
                            torch.cat([vs.targets(), vs.sources()], dim=2))
        return PairBatch.from_roles(sources, targets).join()
