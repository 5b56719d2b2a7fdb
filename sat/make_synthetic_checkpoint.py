"""Write random-weight CogVideoX checkpoints in exactly the layouts of the real download.

    python sat/make_synthetic_checkpoint.py --tiny                  # the CPU default (cached)
    python sat/make_synthetic_checkpoint.py --device cuda           # full-size 2B shapes, for benchmarks
    python sat/make_synthetic_checkpoint.py --base configs/cogvideox_5b.yaml --tiny   # the tiny 5B shape
    python sat/make_synthetic_checkpoint.py --tiny --layout diffusers --output sat/CogVideoX-tiny-diffusers

Paths come from the same configs the samplers read (`args.load`, the VAE `ckpt_path`, the T5
`model_dir`), so the samplers then load these files through their real loading code. Existing
checkpoints are kept unless --force is given. Only folders this writer made (marked
`.ditctrl-synthetic`) or new, empty ones are written: a folder with other files may hold a real
checkpoint and is refused, --force or not. Videos from these weights are noise: they prove the
machinery, not the picture.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ditctrl.config import MODEL_CONFIG, load_config, tiny_config_for, validate_model  # noqa: E402
from ditctrl.console import say  # noqa: E402
from ditctrl.errors import guarded  # noqa: E402
from ditctrl.weights import weight_paths  # noqa: E402
from ditctrl.runs import user_errors  # noqa: E402
from ditctrl.synthetic_checkpoint import write_synthetic_checkpoints  # noqa: E402
from ditctrl.synthetic_claims import PARTS, claim_part_folders  # noqa: E402
from ditctrl.synthetic_folders import missing_parts  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", nargs="*", default=[MODEL_CONFIG], help="model config files (as the samplers)")
    parser.add_argument("--tiny", action="store_true", help="the tiny CPU model (configs/cogvideox_tiny.yaml)")
    parser.add_argument("--device", default="cpu", help="where the random weights are generated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite existing checkpoints")
    parser.add_argument("--layout", choices=("sat", "diffusers"), default="sat",
                        help="SAT files at the config's paths, or one diffusers folder (args.load or --output)")
    parser.add_argument("--output", help="the folder to write instead of args.load (run with args.load=<it>)")
    options = parser.parse_args(argv)
    with user_errors():
        cfg = load_config([*options.base, *([tiny_config_for(options.base)] if options.tiny else [])],
                          overrides=[f"args.load={os.path.abspath(options.output)}"] if options.output else [],
                          require_prompts=False)
        validate_model(cfg)
        missing = {} if options.force else missing_parts(cfg)
        parts = PARTS if options.force else list(missing)
        claim_part_folders(weight_paths(cfg, options.layout), parts, missing)
    if not parts:
        say(f"synthetic checkpoints already present: {weight_paths(cfg)}")
        return
    for name, path in write_synthetic_checkpoints(cfg, options.device, options.seed, parts, options.layout).items():
        say(f"wrote random-weight {name}: {path}")


if __name__ == "__main__":
    guarded(main)
