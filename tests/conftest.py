import os
import sys

# Short OpenMP spin-waits (as the run scripts set), before torch loads libgomp: the tests' subprocesses and
# spawned ranks share the cores, and libgomp's default spinning slows a contended CPU forward many times over.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAT_DIR = os.path.join(REPO_ROOT, "sat")
if SAT_DIR not in sys.path:
    sys.path.insert(0, SAT_DIR)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: runs on a CUDA device (skipped without one; DITCTRL_TEST_DEVICE=cpu "
                                       "runs the same tests on the CPU in bfloat16 as a dry run)")
