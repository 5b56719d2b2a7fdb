"""Fault injection on the tiny model: every fault ends in one line and an exit status, nothing earlier is lost,
no partial file is left under a final name, and bad input stops the run before any model work.

Runs go through `errors.guarded`, the entry scripts' top level, in-process (injected faults) or as
subprocesses where a real signal, a second process or the shell scripts are the point. Each rerun
goes into a copy of one finished run's folder, and must leave it byte for byte as it was.
"""
import errno
import gc
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import sentencepiece
import torch
import yaml

from ditctrl import output_files, video_io
from ditctrl.config import MODEL_CONFIG, TINY_MODEL_CONFIG, load_config
from ditctrl.errors import guarded
from ditctrl.output_files import LOCK_NAME, PARTIAL_TAG
from ditctrl.pipeline import Pipeline
from ditctrl.weights import weight_paths
from ditctrl.runs import run_entry
from ditctrl.synthetic_claims import SYNTHETIC_MARK
from repo_paths import BASE, REPO, SAT

import make_synthetic_checkpoint

CASE = os.path.join(REPO, "inference_case_configs", "edit", "bus_truck.yaml")
FAST = ["model.sampler_config.params.num_steps=2", "args.start_step=1"]
TINY_BASES = ["configs/cogvideox_2b.yaml", "configs/cogvideox_tiny.yaml"]  # then a file of checkpoint paths
OUTPUTS = ("editing_frames49.mp4", "editing_source_frames49.mp4", "editing_target_frames49.mp4", "params.yaml")


pytestmark = pytest.mark.usefixtures("in_repo")


def edit_argv(output_dir, *overrides):
    return [*BASE, "--custom-config", CASE, "--tiny", f"args.output_dir={output_dir}", *FAST, *overrides]


def guarded_edit(capsys, output_dir, *overrides):
    """(exit status, the one line the run printed on stderr) of an edit run through the entry scripts' top level."""
    with pytest.raises(SystemExit) as stop:
        guarded(run_entry, "sample_video_edit", edit_argv(output_dir, *overrides))
        sys.exit(0)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(("error: ", "interrupted: ", "terminated: "))]
    assert len(lines) <= 1 and "Traceback" not in err, err
    return stop.value.code, (lines[0] if lines else "")


def snapshot(folder):
    """{relative path: sha256} of every file under `folder`."""
    digests = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(file.read()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A finished run's folder (seed 42) and its snapshot."""
    folder = tmp_path_factory.mktemp("earlier") / "out"
    guarded(run_entry, "sample_video_edit", edit_argv(folder))
    digests = snapshot(folder)
    assert set(digests) == set(OUTPUTS)
    return folder, digests


@pytest.fixture
def rerun_folder(earlier_run, tmp_path):
    """A copy of the earlier run's folder to rerun into (with another seed, so every output would change)."""
    folder = tmp_path / "out"
    shutil.copytree(earlier_run[0], folder)
    return folder


def assert_untouched(folder, earlier_digests):
    """Every earlier output as it was, nothing new (no partial file, no lock) under the folder."""
    gc.collect()  # a writer left open would finish its file now
    assert snapshot(folder) == earlier_digests


# ---------------------------------------------------------------- interruption and failure at each phase

def _raise(error):
    def fail(*args, **kwargs):
        raise error
    return fail


def _on_call(number, error, original):
    """Call `original` until the `number`-th call, which raises `error`."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise error
        return original(*args, **kwargs)
    return wrapped


def _writer_stopping_at(frame, get_writer):
    """imageio.get_writer whose writers raise KeyboardInterrupt when given their `frame`-th frame."""
    def patched(*args, **kwargs):
        writer = get_writer(*args, **kwargs)
        writer.append_data = _on_call(frame, KeyboardInterrupt, writer.append_data)
        return writer
    return patched


PHASES = {  # phase -> (object, attribute, replacement factory)
    "token check": ("ditctrl.text_encoder.T5Tokens.announce_cut_prompts", lambda original: _raise(KeyboardInterrupt)),
    "encoding": ("ditctrl.pipeline.Pipeline.encode", lambda original: _raise(KeyboardInterrupt)),
    "sampling": ("ditctrl.generation.sample_dpmpp_2m_sde", lambda original: _raise(KeyboardInterrupt)),
    "decoding": ("ditctrl.pipeline.Pipeline.decode", lambda original: _raise(KeyboardInterrupt)),
    # frame 10 of the first video: ffmpeg has a partly written file under the temporary name
    "mp4 frames": ("ditctrl.video_io.imageio.get_writer", lambda original: _writer_stopping_at(10, original)),
    "mp4 check": ("ditctrl.video_io._check_frame_count", lambda original: _raise(KeyboardInterrupt)),
    # the first video is finished and staged when the second one is interrupted
    "second mp4": ("ditctrl.generation.write_mp4", lambda original: _on_call(2, KeyboardInterrupt, original)),
}


def _patch(monkeypatch, dotted, factory):
    module_path, attribute = dotted.rsplit(".", 1)
    try:
        owner = __import__(module_path, fromlist=["_"])
    except ModuleNotFoundError:  # a class attribute: module.Class.method
        module_path, class_name = module_path.rsplit(".", 1)
        owner = getattr(__import__(module_path, fromlist=["_"]), class_name)
    monkeypatch.setattr(owner, attribute, factory(getattr(owner, attribute)))


@pytest.mark.parametrize("phase", PHASES)
def test_interruption_at_each_phase_keeps_every_earlier_output(monkeypatch, capsys, earlier_run, rerun_folder, phase):
    _patch(monkeypatch, *PHASES[phase])
    status, line = guarded_edit(capsys, rerun_folder, "args.seed=7")
    assert status == 130
    assert line == "interrupted: no output of this run was kept; earlier outputs are unchanged"
    assert_untouched(rerun_folder, earlier_run[1])


def test_sigterm_stops_a_run_like_ctrl_c(monkeypatch, capsys, earlier_run, rerun_folder):
    monkeypatch.setattr(Pipeline, "decode", lambda *args: os.kill(os.getpid(), signal.SIGTERM))
    status, line = guarded_edit(capsys, rerun_folder, "args.seed=7")
    assert (status, line) == (143, "terminated: no output of this run was kept; earlier outputs are unchanged")
    assert_untouched(rerun_folder, earlier_run[1])


def test_signal_while_outputs_are_renamed_waits_until_all_are(monkeypatch, capsys, rerun_folder):
    """SIGINT during the final renames: every output of the new run lands (params.yaml with them), then the stop."""
    rename = output_files._rename_into_place

    def rename_with_ctrl_c(temporary, path):
        os.kill(os.getpid(), signal.SIGINT)
        rename(temporary, path)
    monkeypatch.setattr(output_files, "_rename_into_place", rename_with_ctrl_c)
    status, line = guarded_edit(capsys, rerun_folder, "args.seed=7")
    assert (status, line) == (130, "interrupted: after this run's outputs were all written")
    assert sorted(os.listdir(rerun_folder)) == sorted(OUTPUTS)
    assert yaml.safe_load(open(rerun_folder / "params.yaml"))["args"]["seed"] == 7


def test_full_disk_while_writing_a_video(monkeypatch, capsys, earlier_run, rerun_folder):
    """ENOSPC when the finished mp4 is flushed to disk: one line, status 1, nothing earlier changed."""
    sync = output_files._sync_path

    def full_disk_for_videos(path, *args):
        if path.endswith(".mp4") and PARTIAL_TAG in path:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return sync(path, *args)
    monkeypatch.setattr(output_files, "_sync_path", full_disk_for_videos)
    status, line = guarded_edit(capsys, rerun_folder, "args.seed=7")
    assert status == 1
    assert line == (f"error: cannot write {rerun_folder / OUTPUTS[0]}: No space left on device; "
                    "no output of this run was kept; earlier outputs are unchanged")
    assert_untouched(rerun_folder, earlier_run[1])


def test_video_that_does_not_read_back_is_refused(monkeypatch, capsys, earlier_run, rerun_folder):
    """A video whose reopened frame count differs (e.g. cut short by a full disk) never takes its final name."""
    monkeypatch.setattr(video_io.imageio_ffmpeg, "count_frames_and_secs", lambda path: (48, 6.0))
    status, line = guarded_edit(capsys, rerun_folder, "args.seed=7")
    assert status == 1
    assert line.startswith(f"error: cannot write {rerun_folder / OUTPUTS[0]}: the video reads back with 48 frames "
                           "instead of 49")
    assert_untouched(rerun_folder, earlier_run[1])


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 200 kB filesystem: too small for the three videos of an edit run (about 290 kB)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_real_full_disk(capfd, tiny_tmpfs):
    """ffmpeg's own cause is the message (it was "the video does not read back (FFMPEG call failed with 183:)"), and
    nothing ffmpeg printed reaches the terminal: the one line is all of stderr's run lines."""
    with pytest.raises(SystemExit) as stop:
        guarded(run_entry, "sample_video_edit", edit_argv(tiny_tmpfs / "out"))
    assert stop.value.code == 1
    err = capfd.readouterr().err
    assert " @ 0x" not in err  # ffmpeg's tagged lines ("[out#0/mp4 @ 0x55…] Error closing file: …")
    lines = [line for line in err.splitlines() if "No space left" in line]
    assert len(lines) == 1 and re.fullmatch(
        rf"error: cannot write {tiny_tmpfs / 'out'}/editing_\w+\.mp4: No space left on device \(ffmpeg could not "
        r"finish the video\); no output of this run was kept; earlier outputs are unchanged", lines[0]), lines
    assert os.listdir(tiny_tmpfs) == []  # no partial file, no lock, not even the folder the run made


def _writer_running_out_of_space(get_writer, at_frame=None):
    """imageio.get_writer whose ffmpeg prints ffmpeg's full-disk lines on the process's stderr (as the real one, which
    inherits it) and stops: with a broken pipe at frame `at_frame`, else by leaving a truncated file at close."""
    def patched(path, *args, **kwargs):
        writer = get_writer(path, *args, **kwargs)
        append, close = writer.append_data, writer.close

        def append_data(frame):
            if len(appended) == at_frame:
                os.write(2, b"[vost#0:0/libx264 @ 0x55d] Error submitting a packet to the muxer: No space left on "
                            b"device\n")
                raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
            appended.append(1)
            append(frame)

        def close_truncated():
            close()
            os.truncate(path, 100)
            os.write(2, b"[out#0/mp4 @ 0x55c] Error writing trailer: No space left on device\n"
                        b"[out#0/mp4 @ 0x55c] Error closing file: No space left on device\n")
        appended = []
        writer.append_data, writer.close = append_data, close if at_frame is not None else close_truncated
        return writer
    return patched


@pytest.mark.parametrize("at_frame", [None, 10], ids=["at close", "while writing"])
def test_a_full_disk_seen_by_ffmpeg_is_named(monkeypatch, capsys, earlier_run, rerun_folder, at_frame):
    monkeypatch.setattr(video_io.imageio, "get_writer", _writer_running_out_of_space(video_io.imageio.get_writer,
                                                                                     at_frame))
    status, line = guarded_edit(capsys, rerun_folder, "args.seed=7")
    assert (status, line) == (1, f"error: cannot write {rerun_folder / OUTPUTS[0]}: No space left on device (ffmpeg "
                                 "could not finish the video); no output of this run was kept; earlier outputs are "
                                 "unchanged")
    assert_untouched(rerun_folder, earlier_run[1])


def test_ffmpeg_cause_is_its_os_error_or_its_last_line():
    reading = ("FFMPEG call failed with 183:\nffmpeg version n9.0.2\n  libavutil 61\n[in#0 @ 0x55c] moov atom not "
               "found\nError opening input files: Invalid data found when processing input\n")
    assert video_io.ffmpeg_cause(reading) == "Error opening input files: Invalid data found when processing input"
    assert video_io.ffmpeg_cause("[out#0/mp4 @ 0x5] Error closing file: Disk quota exceeded\n") == "Disk quota exceeded"
    assert video_io.ffmpeg_cause("[out#0/mp4 @ 0x5] Task finished\n\n") == "Task finished"
    assert video_io.ffmpeg_cause("") is None


def test_internal_error_is_one_line_with_the_log(monkeypatch, capsys, earlier_run, rerun_folder):
    monkeypatch.setattr(Pipeline, "decode", _raise(RuntimeError("boom\nsecond line")))
    status, line = guarded_edit(capsys, rerun_folder, "args.seed=7")
    assert status == 1
    prefix = "error: internal error (RuntimeError: boom); full log: "
    assert line.startswith(prefix)
    log = open(line[len(prefix):]).read()
    assert "Traceback" in log and "second line" in log and "args.seed=7" not in line
    os.remove(line[len(prefix):])
    assert_untouched(rerun_folder, earlier_run[1])


def test_out_of_gpu_memory_is_one_line_with_what_frees_memory(monkeypatch, capsys, earlier_run, rerun_folder):
    """torch's OutOfMemoryError (CUDA's message has several lines) names the memory knobs, not an internal error."""
    message = "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 23.64 GiB\nOf the ..."
    monkeypatch.setattr(Pipeline, "decode", _raise(torch.OutOfMemoryError(message)))
    assert guarded_edit(capsys, rerun_folder, "args.seed=7") == (1, (
        "error: out of GPU memory (CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
        "23.64 GiB); args.offload=True keeps the VAE on the CPU while sampling and the DiT there while decoding; "
        "docs/performance.md, 'What fits which GPU'; no output of this run was kept; earlier outputs are unchanged"))
    assert_untouched(rerun_folder, earlier_run[1])


def test_real_ctrl_c_during_a_run(earlier_run, rerun_folder):
    """A real Ctrl-C to a running entry script (sent once it holds the folder's lock)."""
    process = subprocess.Popen([sys.executable, "sat/sample_video_edit.py", *edit_argv(rerun_folder, "args.seed=7")],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(rerun_folder / LOCK_NAME) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    err = process.communicate(timeout=120)[1]
    assert process.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted: no output of this run was kept; earlier outputs are unchanged"
    assert "Traceback" not in err
    assert_untouched(rerun_folder, earlier_run[1])


# ---------------------------------------------------------------- one run per folder

LOCK_HOLDER = """
import sys, time
sys.path.insert(0, {sat!r})
from ditctrl.output_files import lock_folder
lock_folder({folder!r})
print("locked", flush=True)
time.sleep(float(sys.argv[1]))
"""


def hold_lock(folder, seconds):
    """A second process that locks `folder` (and dies after `seconds`, or when killed); returns it once locked."""
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER.format(sat=SAT, folder=str(folder)), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_second_run_into_a_busy_folder_is_refused_naming_the_first(capsys, rerun_folder):
    holder = hold_lock(rerun_folder, 60)
    try:
        earlier = snapshot(rerun_folder)
        status, line = guarded_edit(capsys, rerun_folder, "args.seed=7")
        assert status == 2
        assert line.startswith(f"error: args.output_dir {rerun_folder} is in use by another run (pid {holder.pid} on "
                               "host ")
        assert snapshot(rerun_folder) == earlier
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_killed_run_is_reported_not_taken_over(capsys, rerun_folder):
    holder = hold_lock(rerun_folder, 60)
    holder.kill()  # SIGKILL: no clean-up, the lock file stays
    holder.wait()
    earlier = snapshot(rerun_folder)
    status, line = guarded_edit(capsys, rerun_folder, "args.seed=7")
    assert status == 2
    assert line.startswith(f"error: args.output_dir {rerun_folder} has a stale lock of a run that did not finish "
                           f"(pid {holder.pid} on host ")
    assert f"delete {rerun_folder / LOCK_NAME}" in line
    assert snapshot(rerun_folder) == earlier  # the lock file is still there, unchanged


MASK_GUIDED = "args.adaln_mixin_names=[KVSharingMaskGuidedAdaLNMixin]"


@pytest.mark.parametrize("held, overrides, message", [
    # mask_save_dir inside a folder another run holds (its masks would mix with the other run's)
    ("busy", ["args.mask_save_dir={tmp}/busy/masks", MASK_GUIDED],
     "args.mask_save_dir {tmp}/busy/masks lies inside {tmp}/busy, which is in use by another run"),
    # the reverse: output_dir holds a folder another run writes into
    ("out/attn_map", [], "args.output_dir {tmp}/out holds {tmp}/out/attn_map, which is in use by another run"),
    # a busy mask folder is named as what it is
    ("busy", ["args.mask_save_dir={tmp}/busy", MASK_GUIDED],
     "args.mask_save_dir {tmp}/busy is in use by another run"),
])
def test_a_folder_above_or_below_one_another_run_holds_is_refused(capsys, tmp_path, held, overrides, message):
    """Two runs: the first (a live process) holds a folder; the second's folders nest with it. The second is refused
    before any model work, naming the right key, and leaves no folder it made."""
    (tmp_path / held).mkdir(parents=True)
    holder = hold_lock(tmp_path / held, 60)
    try:
        before = sorted(str(path) for path in tmp_path.rglob("*"))
        status, line = guarded_edit(capsys, tmp_path / "out", *[o.format(tmp=tmp_path) for o in overrides])
        assert status == 2
        assert line.startswith(f"error: {message.format(tmp=tmp_path)} (pid {holder.pid} on host "), line
        assert sorted(str(path) for path in tmp_path.rglob("*")) == before  # out/ (or out/ kept as it was) only
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_above_held_by_the_process_that_started_the_run_is_its_own_job(tmp_path):
    """A run started by the process holding a folder above its own (the metrics batch run: its results folder, each
    case's run in a folder below) may claim its folder; a process that did not start it holds the same folder in
    the test above and is refused."""
    from ditctrl.output_files import OutputRun

    (tmp_path / "batch" / "case").mkdir(parents=True)
    child = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from ditctrl.output_files import "
             "OutputRun\nwith OutputRun() as run: run.claim(sys.argv[2])", SAT, str(tmp_path / "batch" / "case")]
    with OutputRun() as run:
        run.claim(str(tmp_path / "batch"))
        assert subprocess.run(child, capture_output=True, text=True).returncode == 0
        grandchild = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)",
                      *child]
        assert subprocess.run(grandchild, capture_output=True, text=True).returncode == 0


def test_a_stale_lock_below_the_output_dir_is_reported_like_any_other(capsys, tmp_path):
    (tmp_path / "out" / "isolated").mkdir(parents=True)
    holder = hold_lock(tmp_path / "out" / "isolated", 60)
    holder.kill()
    holder.wait()
    status, line = guarded_edit(capsys, tmp_path / "out")
    assert status == 2
    assert line.startswith(f"error: args.output_dir {tmp_path / 'out'} holds {tmp_path / 'out' / 'isolated'}, which "
                           f"has a stale lock of a run that did not finish (pid {holder.pid} on host ")
    assert f"delete {tmp_path / 'out' / 'isolated' / LOCK_NAME}" in line
    assert os.listdir(tmp_path / "out") == ["isolated"]  # the earlier folder stays; no lock of this run left


def test_a_refused_run_leaves_no_folder_it_made(capsys, tmp_path):
    """A refusal after the output folders were made (here: the mask folder is another run's) removes the folders
    the run made, all the way up, and nothing else."""
    (tmp_path / "masks").mkdir()
    holder = hold_lock(tmp_path / "masks", 60)
    try:
        status, _ = guarded_edit(capsys, tmp_path / "new" / "deeper" / "out", f"args.mask_save_dir={tmp_path / 'masks'}",
                                 MASK_GUIDED)
        assert status == 2
        assert sorted(os.listdir(tmp_path)) == ["masks"]
    finally:
        holder.kill()
        holder.wait()


def test_a_finished_run_releases_its_lock(capsys, rerun_folder):
    assert guarded_edit(capsys, rerun_folder, "args.seed=7") == (0, "")
    assert sorted(os.listdir(rerun_folder)) == sorted(OUTPUTS)
    assert yaml.safe_load(open(rerun_folder / "params.yaml"))["args"]["seed"] == 7


# ---------------------------------------------------------------- bad input: one line, before any model work

BAD_INPUT = [
    (["args.seed=9223372036854775808"], "args.seed must be < 2^63"),
    (["args.latent_channels=8"], "args.latent_channels (8) must equal model.network_config.params.in_channels (16)"),
    (["model.first_stage_config.params.z_channels=8"], "model.first_stage_config.params.z_channels (8) must equal"),
    (["args.attention_backend=cudnn"], "args.attention_backend = cudnn cannot run on cpu"),
    (["args.attention_backend=bogus"], "args.attention_backend must be one of auto, cudnn, flash, efficient, math"),
    (["args.ref_token_idx=[]", "args.adaln_mixin_names=[KVSharingMaskGuidedAdaLNMixin]"], "args.ref_token_idx is empty"),
    (["model.sampler_config.params.num_steps=abc"], "num_steps must be an int in 2..1000, got 'abc'"),
    (["model.sampler_config.params.num_steps=0"], "num_steps must be an int in 2..1000, got 0"),
    (["model.sampler_config.params.num_steps=1"], "num_steps must be an int in 2..1000, got 1"),
    (["model.sampler_config.params.num_steps=3.5"], "num_steps must be an int in 2..1000, got 3.5"),
    (["model.sampler_config.params.cfg_scale=abc"], "cfg_scale must be a number >= 0, got 'abc'"),
    (["model.sampler_config.params.cfg_exp=2.5"], "cfg_exp must be a whole number"),
    (["model.scale_factor=0"], "model.scale_factor must be a number > 0, got 0"),
    (["model.conditioner_config.params.max_length=32"], "max_length (32) must equal model.network_config.params.text_length"),
    (["args.mask_save_dir=/proc/no_such_dir", "args.adaln_mixin_names=[KVSharingMaskGuidedAdaLNMixin]"],
     "args.mask_save_dir '/proc/no_such_dir' is not writable"),
    (["--prompts", "a cat", "a dog", "args.seed=3"],
     "'args.seed=3' after --prompts would be taken as a prompt; put overrides before --prompts"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT])
def test_bad_input_is_refused_before_model_work(monkeypatch, capsys, earlier_run, rerun_folder, overrides, message):
    monkeypatch.setattr("ditctrl.generation.Pipeline", _raise(AssertionError("model work started")))
    status, line = guarded_edit(capsys, rerun_folder, *overrides)
    assert status == 2 and line.startswith("error: ") and message in line, line
    assert_untouched(rerun_folder, earlier_run[1])


# ---------------------------------------------------------------- sizes that would run away

ROSE_CASE = os.path.join(REPO, "inference_case_configs", "multi_prompts", "rose.yaml")
GROWING = "fewer prompts, or a smaller num_transition_blocks, longer_mid_segment, single_prompt_length or " \
          "sampling_num_frames - overlap_size, make it smaller"


def guarded_long_run(capsys, output_dir, *overrides):
    """(status, one error line) of a tiny multi-prompt run (rose) through the entry scripts' top level."""
    with pytest.raises(SystemExit) as stop:
        guarded(run_entry, "sample_video", [*BASE, "--custom-config", ROSE_CASE, "--tiny",
                                            f"args.output_dir={output_dir}", *FAST, *overrides])
        sys.exit(0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    return stop.value.code, lines[0] if lines else ""


@pytest.mark.parametrize("overrides, estimate", [
    (["args.num_transition_blocks=100000"], "3 prompt(s), 200003 window(s), 800021 latent frames, 3200081 video "
                                            "frames of 32x48"),
    (["args.longer_mid_segment=100000"], "3 prompt(s), 100007 window(s), 400037 latent frames, 1600145 video frames "
                                         "of 32x48"),
    (['args.prompts=["a fish"]', "args.single_prompt_length=100000"],
     "100000 prompt(s), 299998 window(s), 1200001 latent frames, 4800001 video frames of 32x48"),
    (["args.overlap_size=0", "args.num_transition_blocks=20000"],
     "3 prompt(s), 40003 window(s), 520039 latent frames, 2080153 video frames of 32x48"),
])
def test_a_run_that_outgrows_the_host_memory_is_refused_with_its_estimate(monkeypatch, capsys, tmp_path, overrides,
                                                                          estimate):
    """Counts that multiply windows and frames are bounded by what the machine holds, before any model work and
    before any list of prompts or windows is built (they grew the run without bound: 4-16 GB within minutes)."""
    monkeypatch.setattr("ditctrl.run_size.available_host_bytes", lambda: 2**30)
    for built in ("ditctrl.runs.expand_prompts", "ditctrl.runs.plan_run", "ditctrl.generation.Pipeline"):
        monkeypatch.setattr(built, _raise(AssertionError(f"{built} reached")))
    status, line = guarded_long_run(capsys, tmp_path / "out", *overrides)
    assert status == 2
    assert re.fullmatch(rf"error: the run needs at least [\d.]+ GiB of host memory \({re.escape(estimate)}\), more "
                        rf"than the 1\.0 GiB available; {re.escape(GROWING)}", line), line
    assert not (tmp_path / "out").exists()


def test_an_absurd_count_is_refused_at_once(capsys, tmp_path):
    """10^15 transition windows: refused from the closed-form estimate, on any machine, in seconds."""
    start = time.monotonic()
    status, line = guarded_long_run(capsys, tmp_path / "out", f"args.num_transition_blocks={10**15}")
    assert status == 2 and line.startswith("error: the run needs at least ") and "2000000000000003 window(s)" in line
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("resource", ["GPU memory", "files"])
def test_a_run_that_outgrows_the_gpu_or_the_file_system_is_refused(monkeypatch, capsys, tmp_path, resource):
    if resource == "GPU memory":
        monkeypatch.setattr("ditctrl.runs.resolve_device", lambda name, full_size: "cuda")
        monkeypatch.setattr("ditctrl.run_size.gpu_memory", lambda device: 2**30)
        expected = (r"the run needs at least [\d.]+ GiB of GPU memory besides the models \(3 prompt\(s\), 2003 "
                    r"window\(s\), 8021 latent frames, 32081 video frames of 32x48\), more than the GPU's 1\.0 GiB")
        overrides = ["args.num_transition_blocks=1000"]
    else:
        monkeypatch.setattr("ditctrl.run_size.free_inodes", lambda folder: 1000)
        expected = (rf"the run writes 12022 files \(3 prompt\(s\), 1203 window\(s\), 4821 latent frames, 19281 video "
                    rf"frames of 32x48\), more than the 1000 its output file system \({re.escape(str(tmp_path))}/out\) "
                    r"can still hold")  # 1202 pairs x 1 step x 5 layers x 2 masks, the video and params.yaml
        overrides = ["args.num_transition_blocks=600", "args.adaln_mixin_names=[KVSharingMaskGuidedAdaLNMixin]"]
    monkeypatch.setattr("ditctrl.generation.Pipeline", _raise(AssertionError("model work started")))
    status, line = guarded_long_run(capsys, tmp_path / "out", *overrides)
    assert status == 2
    assert re.fullmatch(rf"error: {expected}; {re.escape(GROWING)}", line), line


def test_long_prompt_cut_is_announced_with_its_token_count(monkeypatch, capsys, rerun_folder):
    monkeypatch.setattr("ditctrl.generation.Pipeline", _raise(KeyboardInterrupt))
    long_prompt = "a red bus drives along a winding mountain road " * 7
    with pytest.raises(SystemExit):
        guarded(run_entry, "sample_video_edit", edit_argv(rerun_folder, "--prompts", long_prompt, "a short prompt"))
    pieces = sentencepiece.SentencePieceProcessor(
        model_file=os.path.join(SAT, "CogVideoX-tiny-synthetic", "t5-v1_1-xxl", "spiece.model")).encode(long_prompt)
    count = len(pieces) + 1  # </s>
    assert count > 64
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: prompt")]
    assert notes == [f"note: prompt 0 has {count} T5 tokens (with </s>) but the text context holds 64; its last "
                     f"{count - 64} tokens are cut: \"{long_prompt[:40]}...\""]


# ---------------------------------------------------------------- the synthetic writer stays in its own folders

def real_looking_checkpoints(root):
    """A checkpoint folder as a user's half-finished download: a transformer, a VAE folder without its file."""
    (root / "transformer" / "1000").mkdir(parents=True)
    (root / "transformer" / "1000" / "mp_rank_00_model_states.pt").write_bytes(b"real weights")
    (root / "transformer" / "latest").write_text("1000")
    (root / "vae").mkdir()
    (root / "vae" / "vae.zip").write_bytes(b"still to unzip")
    (root / "t5-v1_1-xxl").mkdir()
    (root / "t5-v1_1-xxl" / "config.json").write_text("{}")
    return [f"args.load={root / 'transformer'}", f"model.first_stage_config.ckpt_path={root / 'vae' / '3d-vae.pt'}",
            f"model.conditioner_config.params.model_dir={root / 't5-v1_1-xxl'}"]


def test_tiny_never_writes_into_a_real_looking_folder(capsys, tmp_path):
    paths = real_looking_checkpoints(tmp_path / "real")
    earlier = snapshot(tmp_path / "real")
    status, line = guarded_edit(capsys, tmp_path / "out", *paths)
    assert status == 2
    vae = tmp_path / "real" / "vae"
    assert line.startswith(f"error: {vae} lacks 3d-vae.pt; refusing to write random weights into {vae}: it holds "
                           "files the synthetic writer did not write (vae.zip)")
    assert snapshot(tmp_path / "real") == earlier
    assert not os.path.exists(tmp_path / "out")


def test_a_t5_folder_without_its_tokenizer_is_named_for_what_it_lacks(capsys, tmp_path, tiny_checkpoints):
    """A copied T5 folder without spiece.model: the refusal says what is missing first (it read as a refusal only)."""
    shutil.copytree(tiny_checkpoints["t5"], tmp_path / "t5", ignore=shutil.ignore_patterns(".ditctrl-synthetic"))
    os.remove(tmp_path / "t5" / "spiece.model")
    status, line = guarded_edit(capsys, tmp_path / "out", f"model.conditioner_config.params.model_dir={tmp_path / 't5'}")
    assert status == 2
    assert line.startswith(f"error: {tmp_path / 't5'} lacks spiece.model; refusing to write random weights into "
                           f"{tmp_path / 't5'}: it holds files the synthetic writer did not write (")
    assert line.endswith("complete it (README.md, 'Download the weights') or point the config at a new or empty folder")


def test_a_refused_part_leaves_no_folder_of_the_other_parts(capsys, tmp_path):
    """Every part's folder is checked before the first is made: a refused VAE folder leaves no new transformer
    folder behind."""
    paths = real_looking_checkpoints(tmp_path / "real")
    (tmp_path / "new").mkdir()
    status, line = guarded_edit(capsys, tmp_path / "out", *paths[1:], f"args.load={tmp_path / 'new' / 'transformer'}")
    assert status == 2 and "refusing to write random weights into" in line
    assert os.listdir(tmp_path / "new") == [] and not os.path.exists(tmp_path / "out")


def test_tiny_never_makes_a_mistyped_folder_outside_sat(capsys, tmp_path):
    """Outside sat/ the writer makes a missing folder only inside an existing one: a mistyped path creates nothing."""
    load = tmp_path / "typo" / "transformer"
    status, line = guarded_edit(capsys, tmp_path / "out", f"args.load={load}")
    assert status == 2
    assert line == (f"error: refusing to write random weights into {load}: {tmp_path / 'typo'} does not exist "
                    "(outside sat/ the synthetic writer only makes a folder inside an existing one); check the path")
    assert os.listdir(tmp_path) == []


def test_synthetic_writer_refuses_real_folders_even_with_force(capsys, tmp_path):
    real_looking_checkpoints(tmp_path / "real")
    base = tmp_path / "paths.yaml"
    base.write_text(yaml.safe_dump({"args": {"load": str(tmp_path / "real" / "transformer")}}))
    earlier = snapshot(tmp_path / "real")
    with pytest.raises(SystemExit) as stop:
        guarded(make_synthetic_checkpoint.main, ["--force", "--base", *TINY_BASES, str(base)])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: refusing to write random weights into {tmp_path / 'real' / 'transformer'}: it holds files the "
        "synthetic writer did not write (1000, latest), perhaps a real checkpoint; point the config at a new or "
        "empty folder")
    assert snapshot(tmp_path / "real") == earlier


def test_synthetic_writer_completes_only_its_own_missing_parts(capsys, tmp_path):
    """In its own (marked) folder a missing part is written; the parts present are reused byte for byte."""
    own = tmp_path / "own"
    own.mkdir()
    base = tmp_path / "paths.yaml"
    base.write_text(yaml.safe_dump({"args": {"load": str(own / "transformer")},
                                    "model": {"first_stage_config": {"ckpt_path": str(own / "vae" / "3d-vae.pt")}}}))
    argv = ["--base", *TINY_BASES, str(base)]
    guarded(make_synthetic_checkpoint.main, argv)
    assert os.path.isfile(own / "transformer" / SYNTHETIC_MARK) and os.path.isfile(own / "vae" / SYNTHETIC_MARK)
    transformer = snapshot(own / "transformer")
    os.remove(own / "vae" / "3d-vae.pt")
    guarded(make_synthetic_checkpoint.main, argv)
    assert "wrote random-weight vae" in capsys.readouterr().out
    assert snapshot(own / "transformer") == transformer and os.path.isfile(own / "vae" / "3d-vae.pt")
    assert not any(PARTIAL_TAG in name for name in os.listdir(own / "vae"))


# ---------------------------------------------------------------- the run scripts

def test_run_script_takes_any_case_file_name_relative_to_the_caller_and_emoji_prompts(tmp_path):
    (tmp_path / "case.yml").write_text(open(CASE).read())
    out = tmp_path / "out"
    result = subprocess.run(["bash", os.path.join(REPO, "run_edit_video.sh"), "case.yml", "--tiny",
                             f"args.output_dir={out}", *FAST, "--prompts", "a red bus 🚌", "a red truck 🚚"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load(open(out / "params.yaml"))["args"]["prompts"] == ["a red bus 🚌", "a red truck 🚚"]
    assert sorted(os.listdir(out)) == sorted(OUTPUTS)


# ---------------------------------------------------------------- checkpoint reading


@pytest.fixture(scope="module")
def tiny_checkpoints(earlier_run):
    """The tiny model's checkpoints (written by the earlier run), for copying and damaging."""
    return weight_paths(load_config([MODEL_CONFIG, TINY_MODEL_CONFIG], require_prompts=False))


def damaged_copy(tiny_checkpoints, root, part, damage):
    """Copy the tiny checkpoints to `root`, apply `damage(folder or file of part)`; return the path overrides."""
    paths = {"transformer": root / "transformer", "vae": root / "vae" / "3d-vae.pt", "t5": root / "t5"}
    shutil.copytree(tiny_checkpoints["transformer"], paths["transformer"])
    (root / "vae").mkdir()
    shutil.copy(tiny_checkpoints["vae"], paths["vae"])
    shutil.copytree(tiny_checkpoints["t5"], paths["t5"])
    named = damage(paths[part])
    return named, [f"args.load={paths['transformer']}", f"model.first_stage_config.ckpt_path={paths['vae']}",
                   f"model.conditioner_config.params.model_dir={paths['t5']}"]


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return path


def _empty(path):
    open(path, "wb").close()
    return path


def _garbage(path):
    open(path, "wb").write(b"not a checkpoint at all" * 10)
    return path


def _dit_file(folder):
    return folder / "1000" / "mp_rank_00_model_states.pt"


def _t5_shard(folder):
    return folder / "model-00002-of-00002.safetensors"


def _drop_tensor(path):
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"].pop(sorted(checkpoint["state_dict"])[0])
    torch.save(checkpoint, path)
    return path


def _wrong_shape(path):
    checkpoint = torch.load(path, weights_only=True)
    key = sorted(checkpoint["state_dict"])[0]
    checkpoint["state_dict"][key] = torch.zeros(3)
    torch.save(checkpoint, path)
    return path


def _latest_nowhere(folder):
    (folder / "latest").write_text("2000")
    return folder / "2000"


CHECKPOINT_FAULTS = {
    "corrupt transformer": ("transformer", lambda folder: _garbage(_dit_file(folder))),
    "truncated transformer": ("transformer", lambda folder: _truncate(_dit_file(folder))),
    "empty transformer": ("transformer", lambda folder: _empty(_dit_file(folder))),
    "latest pointing nowhere": ("transformer", _latest_nowhere),
    "corrupt VAE": ("vae", _garbage),
    "truncated VAE": ("vae", _truncate),
    "VAE missing a tensor": ("vae", _drop_tensor),
    "VAE tensor of a wrong shape": ("vae", _wrong_shape),
    "truncated T5 shard": ("t5", lambda folder: _truncate(_t5_shard(folder))),
    "empty T5 shard": ("t5", lambda folder: _empty(_t5_shard(folder))),
}


@pytest.mark.parametrize("fault", CHECKPOINT_FAULTS)
def test_damaged_checkpoint_is_one_line_naming_the_file_before_model_work(capsys, monkeypatch, tmp_path, earlier_run,
                                                                         rerun_folder, tiny_checkpoints, fault):
    part, damage = CHECKPOINT_FAULTS[fault]
    named, overrides = damaged_copy(tiny_checkpoints, tmp_path / "ckpt", part, damage)
    monkeypatch.setattr("ditctrl.generation.Pipeline", _raise(AssertionError("model work started")))
    status, line = guarded_edit(capsys, rerun_folder, *overrides)
    assert status == 2 and line.startswith("error: ") and str(named) in line, line
    assert_untouched(rerun_folder, earlier_run[1])


# ---------------------------------------------------------------- printing never costs the outputs

def test_a_folder_name_the_output_encoding_cannot_show_keeps_the_outputs(monkeypatch, capsys, tmp_path):
    """stdout in ASCII (PYTHONIOENCODING=ascii, a C locale) and a non-ASCII output_dir: the `wrote` line shows an
    escape instead of failing, and the finished outputs are kept."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", stdout)
    folder = tmp_path / "café"
    status, line = guarded_edit(capsys, folder)
    assert (status, line) == (0, "")
    assert sorted(os.listdir(folder)) == sorted(OUTPUTS)
    stdout.seek(0)
    assert f"wrote {tmp_path}/caf\\xe9/{OUTPUTS[0]}\n" in stdout.read()


def test_stdout_on_a_full_device_keeps_the_outputs(tmp_path):
    """A run script with stdout on /dev/full (every write fails with ENOSPC: the command line it echoes, the notes,
    the `wrote` line, Python's flush at exit): the run's lines are dropped, its outputs kept, status 0."""
    with open("/dev/full", "w") as full:
        result = subprocess.run(["bash", os.path.join(REPO, "run_edit_video.sh"), "--tiny", *FAST,
                                 f"args.output_dir={tmp_path / 'out'}"], stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "error" not in result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == sorted(OUTPUTS)
