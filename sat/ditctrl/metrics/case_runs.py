"""One case file through the generation script, as `run_multi_prompt.sh CASE` runs it: the one place the batch run
touches the generation plumbing (how a run resolves its config, plans its files and is started).

Each case runs as its own process (`python sat/sample_video.py ...`), so a case that fails, runs out of memory or
crashes leaves the batch and the other cases untouched, writes its params.yaml, outputs and locks exactly as a
user's run would, and frees all its memory when it ends; the few seconds of interpreter start-up are small next to
a generation. Every case runs with the isolated baseline (`args.is_run_isolated=True`) into `<out>/videos/<case>`.
"""
import hashlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass

from omegaconf import OmegaConf

from ..config import PARAMS_FILE, expand_prompts, parse_run_cli, validate_model
from ..entry_points import ENTRY_POINTS, check_run, plan_run
from ..errors import Terminated
from ..synthetic_folders import ensure_synthetic_checkpoints
from ..weights import SAT_DIR, check_weight_files, resolve_model

REPO_DIR = os.path.dirname(SAT_DIR)
ENTRY = "sample_video"
STOP_WAIT_S = 60.0  # how long an interrupted case may take to remove its partial files and lock
TRANSITION_LINE = re.compile(r"#\s*transition:\s*(.+?)\s*$")
UNSPECIFIED = "unspecified"
ISOLATED_METHOD = "Isolated"
METHOD_NAMES = {"KVSharingAdaLNMixin": "DiTCtrl", "KVSharingMaskGuidedAdaLNMixin": "DiTCtrl (mask-guided)",
                "BaseAdaLNMixin": "Latent blending only"}
ONE_PROCESS = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
LAUNCHER_ONLY = ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")  # the batch's ranks', never a case's


@dataclass(frozen=True)
class CaseRun:
    name: str           # the case file's stem
    case_file: str      # absolute path
    transition: str     # its kind of transition ('# transition: <kind>' among its first comment lines)
    output_dir: str     # absolute: where the run writes (<out>/videos/<name>)
    argv: tuple         # sample_video.py's arguments

    @property
    def params_file(self) -> str:
        return os.path.join(self.output_dir, PARAMS_FILE)


def transition_kind(case_file: str) -> str:
    """The kind named by a `# transition: <kind>` line among the case file's leading comment lines."""
    with open(case_file, encoding="utf-8") as file:
        for line in file:
            if not line.lstrip().startswith("#"):
                break
            found = TRANSITION_LINE.match(line.strip())
            if found:
                return found.group(1)
    return UNSPECIFIED


def case_run(case_file: str, out: str, model: str, tiny: bool, overrides) -> CaseRun:
    case_file = os.path.abspath(case_file)
    name = os.path.splitext(os.path.basename(case_file))[0]
    output_dir = os.path.join(os.path.abspath(out), "videos", name)
    argv = ("--base", os.path.join(REPO_DIR, "configs", f"cogvideox_{model}.yaml"),
            os.path.join(REPO_DIR, "configs", "inference.yaml"), "--custom-config", case_file,
            *(("--tiny",) if tiny else ()), *overrides, "args.is_run_isolated=True", f"args.output_dir={output_dir}")
    return CaseRun(name, case_file, transition_kind(case_file), output_dir, argv)


def resolve(run: CaseRun):
    """(cfg, plan): the config the run will write as params.yaml, and its planned files; bad input raises
    (ValueError / FileNotFoundError, one line). With --tiny the random weights are written here on first use."""
    cfg, tiny, requested = parse_run_cli(list(run.argv))
    cfg, origins = resolve_model(cfg, requested)  # a diffusers folder's model shape, as the run records it
    validate_model(cfg, origins)
    prompts = expand_prompts(cfg.args)
    if tiny:
        ensure_synthetic_checkpoints(cfg)
    check_weight_files(cfg)
    entry = ENTRY_POINTS[ENTRY]
    check_run(entry, cfg, len(prompts))
    return cfg, plan_run(entry, cfg.args, prompts)


def _comparable(config: dict) -> dict:
    """A resolved config without its output folder (moving the batch's folder changes no video)."""
    return {**config, "args": {key: value for key, value in config["args"].items() if key != "output_dir"}}


def is_complete(run: CaseRun, cfg, plan) -> bool:
    """The run's params.yaml (written last, after every output) is there, describes this config and every planned
    video is next to it."""
    if not os.path.isfile(run.params_file):
        return False
    try:
        written = OmegaConf.to_container(OmegaConf.load(run.params_file), resolve=True)
    except Exception:  # noqa: BLE001 - an unreadable params.yaml is an incomplete run
        return False
    return (_comparable(written) == _comparable(OmegaConf.to_container(cfg, resolve=True))
            and all(os.path.isfile(os.path.join(run.output_dir, name)) for name in plan.files))


def scored_videos(run: CaseRun, cfg, plan) -> list:
    """(method, video path) of each video the batch scores: each controller's long video, then the isolated
    baseline's clips one after another."""
    videos = [(METHOD_NAMES.get(name, name), os.path.join(run.output_dir, files.together))
              for name, files in plan.videos.items()]
    return videos + [(ISOLATED_METHOD, os.path.join(run.output_dir, plan.isolated[-1]))]


def fingerprint(run: CaseRun, videos) -> str:
    """What scores depend on besides the metric settings: params.yaml's text and each video's size and time."""
    with open(run.params_file, "rb") as params:
        digest = hashlib.sha256(params.read())
    for _, path in videos:
        status = os.stat(path)
        digest.update(f"{os.path.relpath(path, run.output_dir)}:{status.st_size}:{status.st_mtime_ns}".encode())
    return digest.hexdigest()


def _one_line_reason(log_path: str, status: int) -> str:
    """The failed run's own one-line message (its last `error: …` line), else its exit status."""
    with open(log_path, encoding="utf-8", errors="replace") as log:
        lines = [line.strip() for line in log if line.startswith(("error:", "interrupted:", "terminated:"))]
    return lines[-1] if lines else f"exit status {status}"


def _stop(process: subprocess.Popen) -> None:
    """Let an interrupted case end as a run ends on Ctrl-C (partial files removed, lock released); kill it after
    STOP_WAIT_S."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def generate(run: CaseRun, log_path: str, gpu: str | None = None) -> str | None:
    """Run the case to its end with its output in `log_path`; None when it succeeded, else its one-line reason.

    `gpu`: the CUDA device the case may use (CUDA_VISIBLE_DEVICES), for one rank of several. Ctrl-C or SIGTERM
    stops the case (and is raised again here) once it has cleaned up.
    """
    environment = {**os.environ, **ONE_PROCESS}
    for launcher_variable in LAUNCHER_ONLY:  # a case is one process: SAT then picks a free port of its own
        environment.pop(launcher_variable, None)
    environment.setdefault("GOMP_SPINCOUNT", "1000")
    if gpu is not None:
        environment["CUDA_VISIBLE_DEVICES"] = gpu
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"{sys.executable} {os.path.join(SAT_DIR, 'sample_video.py')} {' '.join(run.argv)}\n")
        log.flush()
        process = subprocess.Popen([sys.executable, os.path.join(SAT_DIR, "sample_video.py"), *run.argv],
                                   cwd=REPO_DIR, env=environment, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # Ctrl-C: from here, once
        try:
            status = process.wait()
        except (KeyboardInterrupt, Terminated):
            _stop(process)
            raise
    if status in (130, 143):  # the case saw the interrupt before this process did
        raise KeyboardInterrupt
    return None if status == 0 else _one_line_reason(log_path, status)
