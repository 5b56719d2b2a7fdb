"""The run scripts' options: a wrong option is one line, before anything runs."""
import subprocess

import pytest

from repo_paths import REPO

OPTIONS = ("the run scripts take [CASE_FILE] [--model 2b|5b] [--tiny] [--gpus N] [key=value ...] "
           "[--prompts P1 P2 ...] [--help]")


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

