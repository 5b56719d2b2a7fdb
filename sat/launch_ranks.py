"""Start N ranks of an entry script on this machine and end with the job's status (what `--gpus N` runs).

    python sat/launch_ranks.py N sat/sample_video.py --base ... [key=value ...]

Each rank is `python <the arguments after N>` with the environment torchrun would give it (WORLD_SIZE, RANK,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT a free port, OMP_NUM_THREADS=1 unless set), in a
session of its own (Python 3.10's way to a process group of its own), so a Ctrl-C reaches it once: forwarded from
here.

The ranks agree on failures themselves (`distributed.Ranks.together`: the lowest failing rank prints the one line,
the others end silently with its status), so on success or such a failure this launcher prints nothing and exits
with the first nonzero status in rank order (0 when every rank succeeded). A rank that ends with a nonzero status, or by a signal,
while others keep running (they did not notice) gives them GRACE_S seconds to end, then they are stopped (SIGTERM,
then SIGKILL after GRACE_S more); a rank that ended by a signal is reported here in one line, status 1. SIGINT and
SIGTERM are forwarded to the ranks and end the launcher with 130 / 143, as the entry scripts end (errors.guarded).
Imports torch only to count the CUDA devices: N above that count (on a machine without CUDA: above the CPU cores
this process may use, one gloo rank per core) is refused before any rank starts (status 2). When a rank cannot be
started (the system refuses another process), the ranks already started are stopped and one line says so (status 1).
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time

from ditctrl.console import say

GRACE_S = 10.0  # how long the other ranks may take to end after one failed, or to stop after a signal
POLL_S = 0.05
FORWARDED = (signal.SIGINT, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_environment(rank: int, size: int, port: int) -> dict:
    """This process's environment plus what torchrun gives rank `rank` of `size` on one machine."""
    environment = {**os.environ, "WORLD_SIZE": str(size), "RANK": str(rank), "LOCAL_RANK": str(rank),
                   "LOCAL_WORLD_SIZE": str(size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    environment.setdefault("OMP_NUM_THREADS", "1")
    return environment


def job_status(statuses: list) -> int:
    """The job's exit status from its ranks' (None: stopped by the launcher, negative: ended by that signal).

    A rank ended by a signal is reported in one line on stderr (status 1); otherwise the first nonzero status in
    rank order, 0 when there is none."""
    for rank, status in enumerate(statuses):
        if status is not None and status < 0:
            name = signal.strsignal(-status) or "unknown"
            say(f"error: rank {rank} ended by signal {-status} ({name}); the job ended with it", file=sys.stderr)
            return 1
    return next((status for status in statuses if status), 0)


def stop(ranks: list) -> None:
    """End every rank still running: SIGTERM, and SIGKILL for those still running GRACE_S later."""
    for rank in ranks:
        rank.terminate()
    deadline = time.monotonic() + GRACE_S
    for rank in ranks:
        try:
            rank.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            rank.kill()
            rank.wait()


def rank_limit() -> tuple[int, str]:
    """The most ranks this machine runs and what bounds them: its CUDA devices, or without any its CPU cores."""
    import torch

    devices = torch.cuda.device_count()
    return (devices, "CUDA devices") if devices else (len(os.sched_getaffinity(0)), "CPU cores")


def run_ranks(command: list, size: int) -> int:
    """Run `size` ranks of `command` (an argv) to their end; the job's exit status (see the module docstring)."""
    port, ranks, received = free_port(), [], []

    def forward(signum, frame):
        if not received:  # once: a second Ctrl-C must not interrupt the ranks' clean-up
            received.append(signum)
            for rank in ranks:
                rank.send_signal(signum)

    previous = {number: signal.signal(number, forward) for number in FORWARDED}
    try:
        for rank in range(size):  # a session (and process group) of its own, without the terminal: no stdin
            try:
                ranks.append(subprocess.Popen(command, env=rank_environment(rank, size, port),
                                              stdin=subprocess.DEVNULL, start_new_session=True))
            except OSError as error:  # e.g. BlockingIOError: the system allows no more processes
                stop(ranks)
                say(f"error: rank {rank} of {size} could not be started ({error.strerror or error}); the {len(ranks)} "
                    "ranks already started were stopped", file=sys.stderr)
                return 1
            if received:  # a signal came while the ranks started: the new one gets it too
                ranks[-1].send_signal(received[0])
        deadline = None
        while running := [rank for rank in ranks if rank.poll() is None]:
            if deadline is None and (received or any(rank.returncode for rank in ranks)):
                deadline = time.monotonic() + GRACE_S
            if deadline is not None and time.monotonic() > deadline:
                stop(running)
                break
            time.sleep(POLL_S)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        return 128 + received[0]
    return job_status([None if rank in running else rank.returncode for rank in ranks])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    count = argv[0].lstrip("0") if argv else ""
    if len(argv) < 2 or not re.fullmatch("[0-9]+", count):
        say("error: usage: python sat/launch_ranks.py N SCRIPT [ARGUMENTS ...] with N >= 1", file=sys.stderr)
        sys.exit(2)
    limit, bound = rank_limit()
    if len(count) > len(str(limit)) or int(count) > limit:  # by length first: int() refuses 4300 digits or more
        say(f"error: --gpus {count} asks for more ranks than this machine has {bound} ({limit})", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_ranks([sys.executable, *argv[1:]], int(count)))


if __name__ == "__main__":
    main()
