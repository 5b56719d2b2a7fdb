"""Several processes sharing one generation (started by sat/launch_ranks.py or torchrun), bitwise equal to one process.

`python sat/launch_ranks.py N sat/sample_video.py ...` (the run scripts' `--gpus N`) and `torchrun
--nproc_per_node=N sat/sample_video.py ...` start N processes (ranks) with `WORLD_SIZE`, `RANK`, `LOCAL_RANK`,
`MASTER_ADDR` and `MASTER_PORT` in their environment. `distributed_run()` joins them in one
torch.distributed process group (NCCL on CUDA, gloo on CPU) and initialises SAT's model-parallel state on
it with model-parallel size 1 (every rank holds the whole model), so SAT's own initialisation finds both
ready and initialises nothing a second time.

Each step the units of work (window pairs, window groups, pair tails) are dealt by `deal`: contiguous
blocks, the first ranks one unit more. Every rank computes its units, the predictions are all-gathered
(never reduced) and every rank blends all of them in the one-process order, so every rank holds the
latent one process would. A failure inside `together` (and so inside every exchange) ends every rank:
the lowest failing rank raises its own error (reported by `errors.guarded` as one line), the others
raise `StoppedTogether` (a silent SystemExit with that error's exit status).

torch is imported only where several ranks exchange, so one process checks its input before importing it.
"""
import os
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass
from datetime import timedelta

from .errors import exit_status

EXCHANGE_TIMEOUT = timedelta(minutes=30)  # a rank that hangs (not one that fails) ends the job after this


def deal(count: int, size: int) -> list[range]:
    """Units 0..count-1 dealt to `size` ranks: contiguous blocks in rank order, the first count % size one longer."""
    base, extra = divmod(count, size)
    starts = [rank * base + min(rank, extra) for rank in range(size + 1)]
    return [range(starts[rank], starts[rank + 1]) for rank in range(size)]


class StoppedTogether(SystemExit):
    """Raised on the ranks that did not report when some rank failed in a `together` block; its code is the
    reported failure's exit status."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of one run; `Ranks()` is a run in one process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where exchanged tensors live: this rank's GPU with NCCL

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints, prepares the output folder, decodes and writes the run's files."""
        return self.rank == 0

    @contextmanager
    def together(self):
        """Every rank leaves the block together. If any rank failed, the lowest failing rank raises its error
        and every other rank raises `StoppedTogether` with that error's exit status; one process is unchanged.
        Blocks may nest: an error an inner block has settled passes the outer ones without another exchange."""
        failure = None
        try:
            yield
        except (Exception, SystemExit) as error:  # noqa: BLE001 - every failure must reach the other ranks
            if self.size == 1 or getattr(error, "known_to_every_rank", False):
                raise  # one process, or settled by an inner `together`: passed on as it is
            failure = error
        if self.size == 1:
            return
        import torch
        import torch.distributed as dist
        status = 0 if failure is None else exit_status(failure)
        mine = torch.tensor([int(failure is not None), status], device=self.device)  # (failed, exit status)
        everyone = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(everyone, mine)
        failed = [rank for rank, (has_failed, _) in enumerate(everyone) if has_failed]
        if not failed:
            return
        if self.rank != failed[0]:
            failure = StoppedTogether(int(everyone[failed[0]][1]))
        failure.known_to_every_rank = True
        raise failure

    def all_units(self, rows: list[int], row_like: "torch.Tensor", compute_mine) -> list:
        """Every unit's result, in unit order, on every rank, on the device of `row_like`.

        Unit u's result is (rows[u], *row_like.shape); `compute_mine(units)` computes this rank's units (the
        range `deal(len(rows), size)[rank]`) and yields their results in order. They are exchanged in fp32
        (exact for the fp32, fp16 and bf16 predictions the blender reads in fp32).
        """
        blocks = deal(len(rows), self.size)
        with self.together():
            mine = [result.float() for result in compute_mine(blocks[self.rank])]
        if self.size == 1:
            return mine
        import torch
        import torch.distributed as dist
        counts = [sum(rows[u] for u in block) for block in blocks]
        send = torch.zeros(max(counts), *row_like.shape, device=self.device)  # padded to the longest block
        if mine:
            send[:counts[self.rank]] = torch.cat(mine).to(self.device)
        received = [torch.empty_like(send) for _ in range(self.size)]
        dist.all_gather(received, send)
        results = []
        for block, count, rank_rows in zip(blocks, counts, received):
            if block:
                results.extend(rank_rows[:count].to(row_like.device).split([rows[u] for u in block]))
        return results

    def gathered_on_main(self, items: list) -> list:
        """Every rank's `items` (picklable, CPU tensors), concatenated in rank order on rank 0; [] elsewhere."""
        if self.size == 1:
            return items
        import torch.distributed as dist
        lists = [None] * self.size if self.is_main else None
        dist.gather_object(items, lists, dst=0)
        return [item for rank_items in lists for item in rank_items] if self.is_main else []


def require_rank_gpu(local_rank: int, device_count: int) -> None:
    """Each rank computes on the GPU its LOCAL_RANK names; a ValueError (bad input) where there is none."""
    if local_rank >= device_count:
        raise ValueError(f"LOCAL_RANK {local_rank} names no GPU: this process sees {device_count} CUDA device(s); "
                         f"start at most {device_count} ranks on this machine, each seeing every GPU")


@contextmanager
def distributed_run():
    """The `Ranks` of this process, in the process group its environment describes (one process without).

    A process torchrun started joins its group even alone (`--nproc_per_node=1`: the group and SAT's state
    are set up, nothing is exchanged). Ranks other than 0 print nothing on stdout. The group and SAT's parallel
    state are torn down on exit.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:  # not started by torchrun
        yield Ranks()
        return
    import torch
    import torch.distributed as dist
    from sat import mpu
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        require_rank_gpu(local_rank, torch.cuda.device_count())
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=EXCHANGE_TIMEOUT)  # env://: MASTER_ADDR/PORT
    mpu.initialize_model_parallel(1)
    ranks = Ranks(rank, size, local_rank, f"cuda:{local_rank}" if cuda else "cpu")
    try:
        with open(os.devnull, "w") as quiet, redirect_stdout(quiet) if rank else nullcontext():
            yield ranks
    finally:
        mpu.destroy_model_parallel()
        dist.destroy_process_group()
