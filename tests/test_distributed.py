"""Several ranks (gloo, spawned processes) against one process: bitwise the same latents, videos and files.

One group of 2 and one of 3 processes each run several entry-point jobs through `errors.guarded` as the entry
scripts do (the tiny rose case with KV-sharing and mask-guided, work sharing on and off; an edit; bad input; a
rank that fails mid-run); the one-process references run in this process. Every process uses one thread, so
all runs share the thread settings.
"""
import os
import re
import socket
from contextlib import contextmanager

import imageio.v3 as iio
import pytest
import torch
import torch.multiprocessing as mp

from benchmarking.work_counts import rank_work
from ditctrl import generation
from ditctrl.distributed import Ranks, deal
from ditctrl.errors import guarded
from ditctrl.output_files import OutputWriteError
from ditctrl.pipeline import Pipeline
from ditctrl.config import TINY_MODEL_CONFIG, load_config
from ditctrl.runs import prepare_run, run_entry
from ditctrl.segment_layout import segment_layout
from ditctrl.synthetic_folders import ensure_synthetic_checkpoints
from repo_paths import BASE, REPO
from test_work_sharing import FIVE_WINDOWS, KV_SCHEDULE, NUM_STEPS, CountingKVSharing, RowCounting, sample
from tiny_models import small_dit

TINY = [*BASE, "--tiny"]
# Step 0 uncontrolled, step 1 controlled. With work sharing KV-sharing deals window groups (step 0), then window
# groups' first layers and pair tails (step 1); without, mask-guided deals pairs in both steps.
ROSE = ["--custom-config", "inference_case_configs/multi_prompts/rose.yaml", "model.sampler_config.params.num_steps=2",
        "args.start_step=1"]
RUNS = {
    "rose_shared": ("sample_video", [*ROSE, "args.adaln_mixin_names=[KVSharingAdaLNMixin]"]),
    "rose_faithful": ("sample_video", [*ROSE, "args.adaln_mixin_names=[KVSharingMaskGuidedAdaLNMixin]",
                                       "args.share_unshared_work=False"]),
    "edit": ("sample_video_edit", ["--custom-config", "inference_case_configs/edit/bus_truck.yaml",
                                   "model.sampler_config.params.num_steps=2", "args.start_step=1"]),
}
ROSE_LAYOUT = segment_layout(3, 13, 9, 2)  # the tiny rose case's 7 windows (6 pairs) of 30-layer DiT forwards
DECODED = {"rose_shared", "edit"}  # runs whose videos are decoded (with one and two ranks)
JOBS = [*((name, 2) for name in RUNS), ("bad_input", 2), ("failure", 2), ("mask_write_failure", 2),
        ("rose_shared", 3), ("rose_faithful", 3), ("bad_input", 3)]
FAILURE = "injected failure in a pair tail on rank 1"
MASK_WRITE_FAILURE = OutputWriteError("step1.png", "No space left on device")
FAILURES = {  # job: (run, failing rank, what fails there, its error)
    "failure": ("rose_shared", 1, "ditctrl.guided_denoiser.GuidedDenoiser.finish", RuntimeError(FAILURE)),
    # rank 0 cannot write mask-guided's masks of step 1, gathered from both ranks
    "mask_write_failure": ("rose_faithful", 0, "ditctrl.attention.mask_guided.save_mask_frames", MASK_WRITE_FAILURE),
}


def exit_status_of(entry_name, argv) -> int:
    """The exit status of the entry script `entry_name` run with `argv` (its top level: `errors.guarded`)."""
    try:
        guarded(run_entry, entry_name, argv)
    except SystemExit as stop:
        return stop.code
    return 0


def call(name, out) -> int:
    """Run `name`, writing into out/name; its exit status."""
    entry_name, argv = RUNS[name]
    return exit_status_of(entry_name, [*TINY, *argv, f"args.output_dir={out / name}"])


@contextmanager
def latents_saved(folder, rank):
    """Save every final latent the samplers return as folder/.latent{i}_rank{rank}.pt."""
    original = generation.sample_dpmpp_2m_sde
    count = iter(range(100))

    def saving(*args, **kwargs):
        latent = original(*args, **kwargs)
        torch.save(latent, folder / f".latent{next(count)}_rank{rank}.pt")
        return latent

    generation.sample_dpmpp_2m_sde = saving
    try:
        yield
    finally:
        generation.sample_dpmpp_2m_sde = original


@contextmanager
def rows_counted(path):
    """Count the (batch row × layer) evaluations of every controller the run builds; their list saved at `path`."""
    original = generation.build_controller
    built = []

    def counting(*args, **kwargs):
        controller = original(*args, **kwargs)
        controller.__class__ = type(f"Counting{type(controller).__name__}", (RowCounting, type(controller)), {})
        built.append(controller)
        return controller

    generation.build_controller = counting
    try:
        yield
    finally:
        generation.build_controller = original
        torch.save([controller.row_layers for controller in built], path)


@contextmanager
def stderr_to(path):
    """File descriptor 2 of this process into `path`."""
    saved = os.dup(2)
    with open(path, "w") as file:
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextmanager
def videos_decoded(decode):
    """Without `decode` the videos are a one-frame stand-in: the VAE is most of a tiny run's time, and a video is a
    function of the latent, which is still compared."""
    original = Pipeline.decode
    if not decode:
        Pipeline.decode = lambda self, latent: torch.zeros(latent.shape[0], 1, 8, 8, 3, dtype=torch.uint8)
    try:
        yield
    finally:
        Pipeline.decode = original


def job(name, size, rank, out) -> int:
    """Rank `rank` of a torchrun-like job of `size` ranks; returns its exit status."""
    os.environ.update(WORLD_SIZE=str(size), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size))
    if name == "bad_input":
        with stderr_to(out / f"bad_input_rank{rank}.err"):
            return exit_status_of("sample_video", [*TINY, *ROSE, "args.seed=0", f"args.output_dir={out / name}"])
    if name in FAILURES:  # `run` fails on rank `failing_rank` where `target` raises `error`
        run, failing_rank, target, error = FAILURES[name]

        def failing(*args, **kwargs):
            raise error

        with pytest.MonkeyPatch.context() as patch, stderr_to(out / f"{name}_rank{rank}.err"), videos_decoded(False):
            if rank == failing_rank:
                patch.setattr(target, failing)
            return call(run, out / "failed")
    (out / name).mkdir(exist_ok=True)
    with latents_saved(out / name, rank), rows_counted(out / f"{name}_rows_rank{rank}.pt"), \
            videos_decoded(size == 2 and name in DECODED):
        return call(name, out)


def rank_process(rank, ports, out):
    """Process `rank` of the spawned three: its part in every job of JOBS that has a rank `rank`.

    Each job is one torchrun job: its own process group, on its own port (a rank may start the next job while
    rank 0 still writes the last one's files)."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    torch.set_num_threads(1)
    os.chdir(REPO)
    status = {}
    for (name, size), port in zip(JOBS, ports):
        if rank < size:
            os.environ["MASTER_PORT"] = str(port)
            status[name, size] = job(name, size, rank, out / f"ranks{size}")
    torch.save(status, out / f"status_rank{rank}.pt")


def free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    for probe in probes:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in probes]
    for probe in probes:
        probe.close()
    return ports


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in RUNS:
            (out / name).mkdir()
            with latents_saved(out / name, 0), rows_counted(out / f"{name}_rows_rank0.pt"), \
                    videos_decoded(name in DECODED):
                assert call(name, out) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Three processes that run every job of JOBS, as ranks 0..size-1 of it; returns their output folder."""
    out = tmp_path_factory.mktemp("spawned")
    for size in (2, 3):
        (out / f"ranks{size}" / "failed").mkdir(parents=True)
    mp.start_processes(rank_process, args=(free_ports(len(JOBS)), out), nprocs=3, start_method="spawn")
    return out


def statuses(out, name, size):
    return [torch.load(out / f"status_rank{rank}.pt")[name, size] for rank in range(size)]


def files_under(folder, videos=True):
    """Relative path -> bytes of every output file except params.yaml (it holds the output folder); no latents."""
    return {os.path.relpath(os.path.join(root, f), folder): open(os.path.join(root, f), "rb").read()
            for root, _, names in os.walk(folder) for f in names
            if f != "params.yaml" and not f.startswith(".latent") and (videos or not f.endswith(".mp4"))}


@pytest.mark.parametrize("count", range(1, 15))
@pytest.mark.parametrize("size", [1, 2, 3, 6])
def test_deal_is_contiguous_complete_and_balanced(count, size):
    blocks = deal(count, size)
    assert [u for block in blocks for u in block] == list(range(count))
    lengths = [len(block) for block in blocks]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def check_equal_to_one_process(one, many, size, name, videos=True):
    assert statuses(many.parent, name, size) == [0] * size
    reference = files_under(one / name, videos)
    assert name != "rose_faithful" or any(f.endswith(".png") for f in reference)  # the mask-guided masks
    assert files_under(many / name, videos) == reference  # every video and mask, byte for byte
    assert (many / name / "params.yaml").is_file()
    for video in (f for f in reference if f.endswith(".mp4")):
        assert (iio.imread(many / name / video) == iio.imread(one / name / video)).all()
    latents = sorted(f for f in os.listdir(one / name) if f.startswith(".latent"))
    assert latents
    ranks_with_latents = range(1) if name == "edit" else range(size)  # an edit samples on rank 0 alone
    for latent in latents:
        expected = torch.load(one / name / latent)
        for rank in ranks_with_latents:
            assert torch.equal(torch.load(many / name / latent.replace("rank0", f"rank{rank}")), expected)


@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_equal_one_process_bitwise(one_process, spawned, name):
    check_equal_to_one_process(one_process, spawned / "ranks2", 2, name)


@pytest.mark.parametrize("name", ["rose_shared", "rose_faithful"])
def test_three_ranks_equal_one_process_bitwise(one_process, spawned, name):
    check_equal_to_one_process(one_process, spawned / "ranks3", 3, name, videos=False)


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("name", ["rose_shared", "rose_faithful"])
def test_each_rank_computes_its_own_units_only(one_process, spawned, name, size):
    """Equal latents alone do not show the work was split: each rank's layer evaluations are its dealt units'."""
    out = one_process if size == 1 else spawned / f"ranks{size}"
    work = rank_work(ROSE_LAYOUT, size, 30, 25)
    for rank in range(size):
        if name == "rose_shared":  # step 0: window groups; step 1 (KV-sharing from layer 25): shared layers + tails
            expected = (work["window_groups"][rank]["row_layers"]
                        + work["window_layers_and_pair_tails"][rank]["row_layers"])
        else:  # no work sharing: the rank's window pairs in both steps
            expected = 2 * work["pairs"][rank]["row_layers"]
        assert torch.load(out / f"{name}_rows_rank{rank}.pt") == [expected]


def error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


@pytest.mark.parametrize("size", [2, 3])
def test_bad_input_stops_every_rank_with_one_line(spawned, size):
    out = spawned / f"ranks{size}"
    errors = [open(out / f"bad_input_rank{rank}.err").read() for rank in range(size)]
    assert statuses(spawned, "bad_input", size) == [2] * size
    assert error_lines(errors[0]) == ["error: args.seed must be > 0, got 0"]  # besides SAT's own log lines
    assert errors[1:] == [""] * (size - 1)  # the other ranks say nothing
    assert not (out / "bad_input").exists()  # checked before any folder is made


def test_failing_rank_stops_every_rank_with_one_line_and_no_output(spawned):
    out = spawned / "ranks2"
    errors = [open(out / f"failure_rank{rank}.err").read() for rank in range(2)]
    assert statuses(spawned, "failure", 2) == [1, 1]
    assert error_lines(errors[0]) == []  # rank 0 only showed its progress bar
    assert errors[1].count("\n") == 1 and "Traceback" not in errors[1]
    reported, = error_lines(errors[1])
    assert reported.startswith(f"error: internal error (RuntimeError: {FAILURE}); full log: ")
    log = reported.split("; full log: ")[1]
    assert "Traceback" in open(log).read()
    os.remove(log)
    assert not (out / "failed" / "rose_shared").exists()  # nothing written, and the folder the run made removed


def test_a_write_error_on_rank_0_between_steps_stops_every_rank_with_one_line(spawned):
    """Rank 0 writes mask-guided's masks after each step; a full disk there ends the other rank too (it would wait
    in the next step's exchange) with rank 0's one line."""
    out = spawned / "ranks2"
    errors = [open(out / f"mask_write_failure_rank{rank}.err").read() for rank in range(2)]
    assert statuses(spawned, "mask_write_failure", 2) == [1, 1]
    assert error_lines(errors[0]) == [f"error: {MASK_WRITE_FAILURE}; no output of this run was kept; earlier "
                                      "outputs are unchanged"]
    assert errors[1] == ""
    assert not (out / "failed" / "rose_faithful").exists()


class OneRankOfMany(Ranks):
    """Rank `rank` of `size` alone: its own units computed, the others' results zeros (for counting its work)."""

    def all_units(self, rows, row_like, compute_mine):
        mine = deal(len(rows), self.size)[self.rank]
        results = iter(list(compute_mine(mine)))
        return [next(results) if u in mine else torch.zeros(rows[u], *row_like.shape) for u in range(len(rows))]


@pytest.mark.parametrize("max_batch_windows", [2, 3])
@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("share_work", [True, False])
def test_rank_work_counts_each_ranks_layer_calls(share_work, size, max_batch_windows):
    """rank_work's row-layers per rank equal the layer calls of that rank's units in a KV-sharing run."""
    model = small_dit()
    work = rank_work(FIVE_WINDOWS, size, model.num_layers, min(KV_SCHEDULE.layers), max_batch_windows)
    for rank in range(size):
        controller = CountingKVSharing(KV_SCHEDULE)
        sample(model, controller, FIVE_WINDOWS, share_work=share_work, max_batch_windows=max_batch_windows,
               ranks=OneRankOfMany(rank, size))
        controlled = len(KV_SCHEDULE.steps)
        if share_work:  # steps 0 and 3 uncontrolled, 1 and 2 controlled
            expected = ((NUM_STEPS - controlled) * work["window_groups"][rank]["row_layers"]
                        + controlled * work["window_layers_and_pair_tails"][rank]["row_layers"])
        else:
            expected = NUM_STEPS * work["pairs"][rank]["row_layers"]
        assert controller.row_layers == expected


def test_rank_work_for_rose_by_hand():
    """rose: 7 windows, groups [0,1] [2,3] [4,5] [6]; 30 layers, KV-sharing from layer 25 (the model of
    docs/performance.md, "Expected speed-up with several GPUs")."""
    work = rank_work(ROSE_LAYOUT, 2, 30, 25)
    assert [r["row_layers"] for r in work["pairs"]] == [3 * 4 * 30] * 2
    assert [r["row_layers"] for r in work["window_groups"]] == [4 * 2 * 30, 3 * 2 * 30]
    # rank 0: pairs 0-2 need windows 0-3 (groups [0,1] [2,3]); rank 1: pairs 3-5 need windows 3-6 ([2,3] [4,5] [6])
    assert [(r["groups"], r["row_layers"]) for r in work["window_layers_and_pair_tails"]] == [
        (2, 4 * 2 * 25 + 3 * 4 * 5), (3, 5 * 2 * 25 + 3 * 4 * 5)]


def test_a_rank_without_a_gpu_of_its_own_is_one_line(monkeypatch, capsys):
    """A job started with more ranks on a machine than its processes see GPUs (e.g. by hand with torchrun)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert exit_status_of("sample_video", [*TINY, *ROSE]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: LOCAL_RANK 1 names no GPU: this process sees 1 CUDA device(s); start at most 1 ranks on this "
        "machine, each seeing every GPU"]


def test_one_named_gpu_for_several_ranks_is_refused(monkeypatch, tmp_path):
    """args.device=cuda:K cannot hold for every rank: each computes on its own GPU (LOCAL_RANK)."""
    tiny_base = ["--base", "configs/cogvideox_2b.yaml", "configs/inference.yaml", TINY_MODEL_CONFIG]
    ensure_synthetic_checkpoints(load_config(tiny_base[1:], require_prompts=False))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=re.escape(
            "args.device is 'cuda:1', but with several ranks each rank computes on the GPU its LOCAL_RANK names; "
            "use auto or cuda")):
        prepare_run("sample_video", [*tiny_base, *ROSE, "args.device=cuda:1", f"args.output_dir={tmp_path}"],
                    Ranks(0, 2, 0, "cuda:0"))
