"""The DiT batch of source/target window pairs under classifier-free guidance: its rows, their order, split and join.

The guided denoiser stacks its samples' unconditional rows, then their conditional rows. For a pair
x = [x_source, x_target] that is the batch (u_source, u_target, c_source, c_target), the order every
attention controller relies on. With n pairs batched together each of the four parts holds n rows.
"""
from typing import NamedTuple

import torch


def guidance_batch(uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The DiT batch of B samples: their B unconditional rows, then their B conditional rows."""
    return torch.cat([uncond, cond])


def split_guidance(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B, ...) guidance batch -> (uncond rows, cond rows), B each."""
    return batch.chunk(2)


class PairBatch(NamedTuple):
    """The four parts of a pair batch, each (n, ...) for n pairs."""
    u_source: torch.Tensor
    u_target: torch.Tensor
    c_source: torch.Tensor
    c_target: torch.Tensor

    @classmethod
    def split(cls, batch: torch.Tensor) -> "PairBatch":
        """Split a (4·n, ...) DiT batch into its parts."""
        if batch.shape[0] % 4:
            raise ValueError("attention control needs a batch of source/target pairs with CFG "
                             f"(u_source, u_target, c_source, c_target: a multiple of 4 rows), got {batch.shape[0]}")
        return cls(*batch.chunk(4))

    def join(self) -> torch.Tensor:
        """The (4·n, ...) DiT batch."""
        return torch.cat(self)

    def sources(self) -> torch.Tensor:
        """(2·n, ...): u_source, c_source."""
        return torch.cat([self.u_source, self.c_source])

    def targets(self) -> torch.Tensor:
        """(2·n, ...): u_target, c_target."""
        return torch.cat([self.u_target, self.c_target])

    @classmethod
    def from_roles(cls, sources: torch.Tensor, targets: torch.Tensor) -> "PairBatch":
        """Inverse of (`sources()`, `targets()`)."""
        u_source, c_source = sources.chunk(2)
        u_target, c_target = targets.chunk(2)
        return cls(u_source, u_target, c_source, c_target)

    def targets_as_sources(self) -> "PairBatch":
        """Each target part replaced by its source: (u_s, u_s, c_s, c_s), what KV-sharing hands the targets."""
        return PairBatch(self.u_source, self.u_source, self.c_source, self.c_source)
