import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAT_DIR = os.path.join(REPO_ROOT, "sat")
if SAT_DIR not in sys.path:
    sys.path.insert(0, SAT_DIR)
