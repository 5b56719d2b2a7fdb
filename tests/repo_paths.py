"""Where this checkout is, and the base configs every entry-script test starts from (run from the repo root)."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAT = os.path.join(REPO, "sat")
BASE = ["--base", "configs/cogvideox_2b.yaml", "configs/inference.yaml"]
