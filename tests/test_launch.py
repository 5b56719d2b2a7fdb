"""The run scripts' options and `--gpus N`'s launcher (sat/launch_ranks.py).

The launcher's rules are checked with tiny `python -c` ranks that exit with given statuses, kill themselves or
hang; one tiny 2-rank model run goes through `run_multi_prompt.sh --gpus 2` end to end.
"""
import errno
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import launch_ranks
from repo_paths import REPO, SAT

OPTIONS = ("the run scripts take [CASE_FILE] [--model 2b|5b] [--tiny] [--gpus N] [key=value ...] "
           "[--prompts P1 P2 ...] [--help]")
# Rank r of a fake job does actions[r]: exit with that status, "kill" itself with SIGKILL, or "hang" (ignoring
# SIGTERM) for a minute. Every rank first writes its environment's rank variables to rank{r}.env.
FAKE_RANK = """
import os, signal, sys, time
rank = int(os.environ["RANK"])
names = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")
with open(f"rank{{rank}}.env", "w") as out:
    out.write(repr({{name: os.environ.get(name) for name in names}}))
action = {actions!r}[rank]
if action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if action == "hang":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
sys.exit(action)
"""


def run_script(*args):
    return subprocess.run(["bash", "run_multi_prompt.sh", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("gpus", ["0", "two", ""])
def test_run_script_rejects_a_bad_gpu_count(gpus):
    result = run_script("--tiny", "--gpus", gpus)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: --gpus takes a whole number of processes >= 1, got '{gpus}'\n"


@pytest.mark.parametrize("args, line", [
    (["--tiny", "--model"], "error: --model needs a value: --model 2b|5b"),
    (["--model", "tiny"], "error: unknown model 'tiny' (--model); choices: 2b, 5b; --tiny selects the tiny "
                          "random-weight model of either"),
    (["--model=cogvideox_5b_tiny"], "error: unknown model 'cogvideox_5b_tiny' (--model); choices: 2b, 5b"),
    (["--model", "2b", "--model=5b"], "error: more than one --model ('2b', '5b'): a run takes one"),
    (["--gpus", "2", "--tiny", "--gpus", "2"], "error: more than one --gpus ('2', '2'): a run takes one"),
    (["first.yaml", "--tiny", "second.yaml"], "error: more than one case file ('first.yaml', 'second.yaml'): a run "
                                              "takes one"),
    (["--tiny", "--gpus"], "error: --gpus needs a value: --gpus N, the number of processes"),
    (["--gpu", "2"], f"error: unknown option '--gpu'; {OPTIONS}"),
    (["--tiny", "-n", "2"], f"error: unknown option '-n'; {OPTIONS}"),
])
def test_run_script_answers_a_wrong_option_in_one_line(args, line):
    result = run_script(*args)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", line + "\n")


def test_run_script_help_is_the_entry_scripts_help_once():
    result = run_script("--gpus", "2", "--help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: sample_video.py") and result.stdout.count("usage:") == 1
    assert "--prompts" in result.stdout


def test_a_gpu_count_beyond_64_bits_reaches_the_launcher_unwrapped():
    """Shell arithmetic would wrap 2**64 + 1 to 1 and silently run one process; the launcher refuses it."""
    result = run_script("--tiny", "--gpus", str(2**64 + 1))
    assert result.returncode == 2
    assert result.stdout.startswith(f"python sat/launch_ranks.py {2**64 + 1} sat/sample_video.py ")
    assert re.fullmatch(rf"error: --gpus {2**64 + 1} asks for more ranks than this machine has (CPU cores|CUDA "
                        r"devices) \(\d+\)\n", result.stderr)


def test_two_ranks_with_bad_input_end_with_one_error_line_and_status_2():
    result = run_script("--tiny", "--gpus", "2", "args.seed=0")
    assert result.stdout.startswith("python sat/launch_ranks.py 2 sat/sample_video.py ")
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
        "error: args.seed must be > 0, got 0"]  # besides SAT's log lines
    assert "Traceback" not in result.stderr


def fake_job(actions, grace_s=0.5) -> int:
    """The launcher's status for fake ranks doing `actions` (see FAKE_RANK), run in the current folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(launch_ranks, "GRACE_S", grace_s)
        return launch_ranks.run_ranks([sys.executable, "-c", FAKE_RANK.format(actions=actions)], len(actions))


def test_ranks_get_the_environment_torchrun_gives(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert fake_job([0, 0, 0]) == 0
    seen = [eval((tmp_path / f"rank{rank}.env").read_text()) for rank in range(3)]
    port = seen[0]["MASTER_PORT"]
    assert port.isdigit()
    assert seen == [{"WORLD_SIZE": "3", "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "3",
                     "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"} for rank in range(3)]


@pytest.mark.parametrize("actions, status", [
    ([0, 0], 0),
    ([2, 2, 2], 2),  # a failure the ranks agreed on (Ranks.together)
    ([0, 3, 2], 3),  # the first nonzero status in rank order
    ([5, 0], 5),
])
def test_the_job_status_is_the_first_nonzero_rank_status_silently(tmp_path, monkeypatch, capfd, actions, status):
    monkeypatch.chdir(tmp_path)
    assert fake_job(actions) == status
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("actions, status, line", [
    (["hang", "kill"], 1, "error: rank 1 ended by signal 9 (Killed); the job ended with it\n"),
    (["hang", 4], 4, ""),  # the failed rank printed its own line; the hanging rank is stopped, even ignoring SIGTERM
])
def test_ranks_still_running_after_one_failed_are_stopped(tmp_path, monkeypatch, capfd, actions, status, line):
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert fake_job(actions) == status
    assert time.monotonic() - start < 30  # the hanging rank would sleep 60 s
    assert capfd.readouterr().err == line


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_launchers_process_group_reaches_each_rank_once(tmp_path, signum, status):
    """As a Ctrl-C in a terminal reaches the whole foreground process group: each rank gets it once, forwarded."""
    rank = tmp_path / "rank.py"
    rank.write_text(f"""
import os, signal, sys, time
received = []
signal.signal({int(signum)}, lambda number, frame: received.append(number))
os.write(1, b"r")  # ready, in one write
end = time.monotonic() + 30
while not received and time.monotonic() < end:
    time.sleep(0.05)
time.sleep(0.5)  # a second signal would arrive in this time
open(f"received{{os.environ['RANK']}}", "w").write(str(len(received)))
sys.exit({status} if received else 0)
""")
    launcher = subprocess.Popen([sys.executable, os.path.join(SAT, "launch_ranks.py"), "2", str(rank)], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert launcher.stdout.read(2) == "rr"  # both ranks ready
    os.killpg(launcher.pid, signum)
    assert launcher.wait(timeout=60) == status
    assert launcher.stderr.read() == ""
    assert [(tmp_path / f"received{rank}").read_text() for rank in range(2)] == ["1", "1"]


@pytest.mark.parametrize("devices, cores, size, line", [
    (2, 16, 3, "error: --gpus 3 asks for more ranks than this machine has CUDA devices (2)\n"),
    (2, 16, 2, None),
    (0, 4, 4, None),  # without CUDA: gloo ranks, one per CPU core
    (0, 4, 5, "error: --gpus 5 asks for more ranks than this machine has CPU cores (4)\n"),
    (0, 4, "18446744073709551617", "error: --gpus 18446744073709551617 asks for more ranks than this machine has CPU "
                                   "cores (4)\n"),  # 2**64 + 1
    (0, 4, "9" * 5000, f"error: --gpus {'9' * 5000} asks for more ranks than this machine has CPU cores (4)\n"),
])
def test_more_ranks_than_the_machine_runs_are_refused_before_any_starts(monkeypatch, capsys, devices, cores, size,
                                                                        line):
    started = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(launch_ranks, "run_ranks", lambda command, size: started.append(size) or 0)
    with pytest.raises(SystemExit) as end:
        launch_ranks.main([str(size), "sat/sample_video.py"])
    if line:
        assert (end.value.code, started) == (2, [])
        assert capsys.readouterr().err == line
    else:
        assert (end.value.code, started) == (0, [int(size)])


def test_a_rank_that_cannot_be_started_stops_the_started_ones(tmp_path, monkeypatch, capfd):
    """The system refuses the third process (as a huge --gpus ended before it was bounded): the two started ranks are
    stopped, one line says so, status 1."""
    monkeypatch.chdir(tmp_path)
    started, popen = [], subprocess.Popen

    def popen_until_the_third(*args, **kwargs):
        if len(started) == 2:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        started.append(popen(*args, **kwargs))
        return started[-1]
    monkeypatch.setattr(launch_ranks.subprocess, "Popen", popen_until_the_third)
    assert fake_job(["hang", "hang", 0, 0]) == 1
    assert all(rank.poll() in (-signal.SIGTERM, -signal.SIGKILL) for rank in started)  # ended by the launcher
    assert capfd.readouterr().err == ("error: rank 2 of 4 could not be started (Resource temporarily unavailable); "
                                      "the 2 ranks already started were stopped\n")


@pytest.mark.parametrize("argv", [[], ["2"], ["0", "sat/sample_video.py"], ["two", "sat/sample_video.py"]])
def test_launcher_usage_errors_are_one_line(capsys, argv):
    with pytest.raises(SystemExit) as end:
        launch_ranks.main(argv)
    assert end.value.code == 2
    assert capsys.readouterr().err == "error: usage: python sat/launch_ranks.py N SCRIPT [ARGUMENTS ...] with N >= 1\n"
