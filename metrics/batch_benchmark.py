"""The batch comparison of the paper's Table 1 on your own prompt sets (docs/metrics.md, "Batch run"): every case
with DiTCtrl and with the isolated baseline, each video scored (CSCV, motion smoothness, text similarity).

    bash metrics/run_benchmark.sh CASES [CASES ...] [--out DIR] [--model 2b|5b] [--tiny] [--gpus N] [key=value ...]

CASES are case files or folders of them (e.g. inference_case_configs/prompt_sets). Writes into --out (default
outputs/batch_comparison): videos/<case>/ (each run's own output folder), cases/<case>/ (generation.log, case.json
with its scores, similarity.png), results.csv, results.md and results.png. A rerun skips the cases that are
complete and unchanged. --gpus N deals whole cases to N processes (one GPU each). One line per case; the exit status
is the number of failed cases (2 with an `error:` line and no case run: bad input).
"""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sat"))

from ditctrl.errors import Terminated, guarded  # noqa: E402
from ditctrl.metrics.command_line import (OneLineParser, add_clip_options, add_device_option, checked_clip,  # noqa: E402
                                          metric_device)
from ditctrl.runs import user_errors  # noqa: E402

OVERRIDE = re.compile(r"(args|model)\.[\w.\-]+=")
MAX_STATUS = 100  # failed cases beyond this still exit 100 (higher statuses mean signals)
INTERRUPTED = "the cases that ended are kept with their params.yaml; run the same command again to resume"


def parse(argv):
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="CASES_OR_KEY=VALUE",
                        help="case files or folders of them, and key=value overrides for every case")
    parser.add_argument("--out", default="outputs/batch_comparison", help="the batch's folder")
    parser.add_argument("--model", default="2b", choices=("2b", "5b"), help="CogVideoX-2B or -5B")
    parser.add_argument("--tiny", action="store_true", help="the tiny random-weight model (checks the pipeline)")
    parser.add_argument("--gpus", type=int, default=1, help="processes, one GPU each; cases are dealt to them whole")
    add_clip_options(parser)
    parser.add_argument("--amt_path", help="VBench's amt-s.pth (default checkpoints/amt-s.pth, then "
                                           "~/.cache/vbench/amt_model/amt-s.pth)")
    parser.add_argument("--amt_batch_size", type=int, default=4, help="frame pairs per AMT-S forward")
    add_device_option(parser)
    return parser.parse_intermixed_args(argv)


def this_process():
    """This process's rank among the processes the launcher started (one process without)."""
    from ditctrl.distributed import Ranks

    size = int(os.environ.get("WORLD_SIZE", "1"))
    return Ranks(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def metric_models(options, clip_folder: str, amt_path: str, device: str):
    from ditctrl.metrics.clip_features import load_clip
    from ditctrl.metrics.motion_smoothness import load_amt_s
    from ditctrl.metrics.video_scores import MetricModels

    def load():
        clip, tokenizer = load_clip(clip_folder, device)
        return MetricModels(clip, tokenizer, load_amt_s(amt_path, device), options.image_size, options.batch_size,
                            options.amt_batch_size)
    return load


def rank_device(options, ranks) -> str:
    device = metric_device(options.device)
    if ranks.size > 1 and device.startswith("cuda"):
        import torch
        torch.cuda.set_device(ranks.local_rank)
        return "cuda"
    return device


def main(argv=None):
    options = parse(sys.argv[1:] if argv is None else argv)
    from ditctrl.metrics import batch as batching
    from ditctrl.metrics.model_files import amt_checkpoint
    from ditctrl.output_files import lock_folder, unlock_folder

    ranks = this_process()
    run_id = batching.batch_run_id()
    coordinator = options.gpus > 1 and ranks.size == 1  # starts the ranks; a rank has WORLD_SIZE > 1
    with user_errors():
        if options.gpus < 1 or options.amt_batch_size < 1:
            raise ValueError("--gpus and --amt_batch_size must be >= 1")
        if coordinator:
            import torch
            if torch.cuda.is_available() and options.gpus > torch.cuda.device_count():
                raise ValueError(f"--gpus {options.gpus} asks for more processes than this machine has CUDA devices "
                                 f"({torch.cuda.device_count()})")
        clip_folder = checked_clip(options, with_text=True)
        amt_path = amt_checkpoint(options.amt_path)
        settings = {"clip": os.path.abspath(clip_folder), "amt": os.path.abspath(amt_path),
                    "image_size": options.image_size}
        cases = [item for item in options.inputs if not OVERRIDE.match(item)]
        overrides = [item for item in options.inputs if OVERRIDE.match(item)]
        batch, resolved = batching.prepare_batch(cases, options.out, options.model, options.tiny, overrides, settings,
                                                 options.batch_size, options.amt_batch_size)
        device = rank_device(options, ranks)
        lock = None
        if ranks.size == 1:  # the coordinator or the only process holds the batch folder
            os.makedirs(batch.out, exist_ok=True)
            try:
                lock = lock_folder(batch.out)
            except ValueError as error:
                raise ValueError(str(error).replace("args.output_dir", "--out")) from None
    try:
        if coordinator:
            from launch_ranks import run_ranks
            status = run_ranks([sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])], options.gpus)
            if status in (2, 130, 143) or status < 0:
                sys.exit(status)
        else:
            batching.run_share(batch, resolved, ranks, metric_models(options, clip_folder, amt_path, device), run_id)
            if ranks.size > 1:
                return 0
        failed = batching.collect(batch, run_id)
    except (KeyboardInterrupt, Terminated) as stop:
        if ranks.size == 1:  # the ranks end quietly; the process that started them says it once
            print(f"{'interrupted' if isinstance(stop, KeyboardInterrupt) else 'terminated'}: {INTERRUPTED}",
                  file=sys.stderr)
        sys.exit(130 if isinstance(stop, KeyboardInterrupt) else 143)
    finally:
        if lock is not None:
            unlock_folder(batch.out, lock)
    sys.exit(min(failed, MAX_STATUS))


if __name__ == "__main__":
    guarded(main)
