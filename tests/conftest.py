import sys

import pytest

from repo_paths import REPO, SAT

if SAT not in sys.path:
    sys.path.insert(0, SAT)

import ditctrl  # noqa: E402 - its environment (OpenMP spin-waits, SAT's log level) before torch and SAT load
import sat.helpers  # noqa: E402,F401 - SAT's logger keeps the stream it was made with: the session's stderr, not a
# test's captured one, which closes with the test (a later SAT log line would then fail in an unrelated test)


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repository root, as the run scripts do (the configs' relative paths)."""
    monkeypatch.chdir(REPO)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: runs on a CUDA device (skipped without one; DITCTRL_TEST_DEVICE=cpu "
                                       "runs the same tests on the CPU in bfloat16 as a dry run)")
