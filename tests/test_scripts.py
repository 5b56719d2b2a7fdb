"""The entry points end to end on the tiny random-weight model (few sampler steps to keep CI fast).

The rose case and one case of each kind in the original's exact case-file format go through the run_*.sh
scripts as a user would call them; the rest call the same entry functions in-process, which saves the
interpreter start-up of every run.
"""
import os
import re
import shlex
import subprocess
import sys

import imageio.v3 as iio
import pytest
import torch
import yaml

import sample_video
import sample_video_edit
from ditctrl.config import MODEL_CONFIG, TINY_MODEL_CONFIG, expand_prompts, load_config, parse_cli
from ditctrl.entry_points import ENTRY_POINTS, plan_run
from ditctrl.output_files import OutputRun
from ditctrl.run_size import run_size
from ditctrl.runs import prepare_run
from ditctrl.synthetic_folders import ensure_synthetic_checkpoints
from ditctrl.weights import weight_paths
from repo_paths import BASE, REPO

FAST = ["model.sampler_config.params.num_steps=4"]
ROSE = "inference_case_configs/multi_prompts/rose.yaml"
EDIT_CASE = "inference_case_configs/edit/bus_truck.yaml"
# Cases in the exact format of the original DiTCtrl's inference_case_configs (its keys, values and layout), with
# prompts of our own: its (6, 1) multi-prompt, mask-guided, single-prompt, reweight, visualisation and edit cases.
ORIGINAL_FORMAT = os.path.join(REPO, "tests", "original_format_cases")
TINY_NOTE = ("note: --tiny samples a tiny random-weight CogVideoX: the video checks the pipeline, not the picture "
             "(real videos need the real CogVideoX-2b weights, see README.md)")
PROGRESS_BAR = re.compile(r".*: +\d+%\|.*\| \d+/\d+ \[.*(?:step/s|s/step)\]")  # the sampler's bar (unit: step)


pytestmark = pytest.mark.usefixtures("in_repo")


def multi_prompt(case, *overrides):
    sample_video.main([*BASE, "--custom-config", case, "--tiny", *overrides])


def edit(case, *overrides):
    sample_video_edit.main([*BASE, "--custom-config", case, "--tiny", *overrides])


def model_work_started(*args, **kwargs):
    raise AssertionError("the run reached model work")


def user_error(capsys, call, *args) -> str:
    """The one-line error of a run that must stop before any model work (building the pipeline fails the test)."""
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as stop:
        patch.setattr("ditctrl.generation.Pipeline", model_work_started)
        call(*args)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, captured.err
    assert "step/s" not in captured.err and "s/step" not in captured.err  # no sampling started
    return errors[0]


def run_script(script, *args, check=True):
    result = subprocess.run(["bash", script, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def frames_of(path):
    """(frames, height, width, 3) of an mp4."""
    return iio.imread(path)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def test_multi_prompt_with_isolated_baseline(out):
    target = out / "rose"
    run_script("run_multi_prompt.sh", "--tiny", f"args.output_dir={target}", "args.is_run_isolated=True", *FAST)
    video = frames_of(target / "MultiPrompt_frames145.mp4")
    assert video.shape == (145, 32, 48, 3)
    isolated = sorted(os.listdir(target / "isolated"))
    assert len(isolated) == 4 and "all_frames147.mp4" in isolated
    assert isolated[0].startswith("0_A_gentle_close_shot_of_the_same_rose_petal,_where") and isolated[0].endswith("_frames49.mp4")
    assert frames_of(target / "isolated" / "all_frames147.mp4").shape[0] == 147
    params = yaml.safe_load(open(target / "params.yaml"))
    assert len(params["args"]["prompts"]) == 3 and params["model"]["sampler_config"]["params"]["num_steps"] == 4


@pytest.mark.parametrize("args, message", [
    (["args.overlap-size=3"], "did you mean 'overlap_size'"),
    (["args.overlap_size=13"], "overlap_size (13) must be >= 0 and smaller than the tile sampling_num_frames (13)"),
    (["args.seed=zero"], "args.seed must be an int"),
    (["args.ref_token_idx=[64]", "args.adaln_mixin_names=[KVSharingMaskGuidedAdaLNMixin]"], "args.ref_token_idx = 64"),
    (["args.layer_idx=[30]"], "args.layer_idx contains 30"),
    (["args.sampling_num_frames=15"], "at most 13"),
    (["args.sampling_num_frames=12"], "must be odd"),
    (["args.adaln_mixin_names=[VisualizeAdaLNMixin]"],
     "sample_video.py cannot run VisualizeAdaLNMixin (it accepts BaseAdaLNMixin, KVSharingAdaLNMixin, "
     "KVSharingMaskGuidedAdaLNMixin, ReferenceAttentionAdaLNMixin, ReWeightAdaLNMixin); VisualizeAdaLNMixin runs in "
     "sample_video_visualize.py"),
    (["args.adaln_mixin_names=[ReWeightAdaLNMixin]", "args.reweight_token_idx=[2,40]",
      "args.prompts=[a red rose in a garden,a red rose in a garden]"], "args.reweight_token_idx = 40 is outside prompt 0"),
    (["args.adaln_mixin_names=[ReWeightAdaLNMixin]", "args.prompts=[a red rose,a rose in a garden]"],
     "same number of tokens"),
])
def test_bad_input_is_one_line_before_model_work(out, capsys, args, message):
    error = user_error(capsys, multi_prompt, ROSE,
                       f"args.output_dir={out / 'bad'}", *args)
    assert message in error


def command_line(model, *overrides):
    """The line a run script prints before it runs its entry script (sat/run_case.sh)."""
    return " ".join(["python sat/sample_video.py --base", f"configs/cogvideox_{model}.yaml", "configs/inference.yaml",
                     "--custom-config", os.path.join(REPO, ROSE), *overrides])


@pytest.mark.parametrize("model", ["2b", "5b"])
def test_missing_real_weights_are_the_only_output_and_name_the_model_s_download(model):
    """Without the weights: the command line, then one error line naming the path and the configured model's
    download; no library line on either stream (the check runs before torch and SAT are imported)."""
    assert not os.path.exists(os.path.join(REPO, "sat", f"CogVideoX-{model}"))
    result = run_script("run_multi_prompt.sh", "--model", model, check=False)
    name = f"CogVideoX-{model}"
    assert result.returncode == 2
    assert result.stdout.splitlines() == [command_line(model)]
    assert result.stderr.splitlines() == [
        f"error: missing checkpoint {REPO}/sat/{name}; see README.md, section 'Download the weights', or run with "
        f"--tiny. In short: hf download THUDM/{name} --local-dir sat/{name} (huggingface_hub before 0.34: "
        "huggingface-cli download with the same arguments)"]


def test_an_error_found_after_sat_is_imported_is_the_only_line_on_stderr():
    """SAT logs INFO lines when imported (here "DeepSpeed/CUDA is not installed ..."); they stay quiet
    (SAT_LOGLEVEL defaults to WARNING), so a check that needs torch and SAT still ends in one line."""
    result = run_script("run_multi_prompt.sh", "--tiny", "args.device=cpu", "args.attention_backend=cudnn",
                        check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: args.attention_backend = cudnn cannot run on cpu in float32 with head size 32; use auto (or math)"]


def test_weights_folder_of_neither_layout_is_the_only_output(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    result = run_script("run_multi_prompt.sh", f"args.load={tmp_path}", check=False)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [command_line("2b", f"args.load={tmp_path}")]
    assert result.stderr.splitlines() == [
        f"error: {tmp_path} is neither a diffusers folder (model_index.json, e.g. from hf download "
        "THUDM/CogVideoX-2b --local-dir sat/CogVideoX-2b) nor a SAT transformer folder (latest + <iteration>/)"]


def stop_after_the_note(cfg):
    raise ValueError("stopped after the note")


@pytest.mark.parametrize("model", ["2b", "5b"])
def test_tiny_note_names_the_configured_model(capsys, model):
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit):
        patch.setattr("ditctrl.runs.ensure_synthetic_checkpoints", stop_after_the_note)  # the next step
        sample_video.main(["--base", f"configs/cogvideox_{model}.yaml", "configs/inference.yaml", "--custom-config",
                           ROSE, "--tiny"])
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: --tiny")]
    assert notes == ["note: --tiny samples a tiny random-weight CogVideoX: the video checks the pipeline, not the "
                     f"picture (real videos need the real CogVideoX-{model} weights, see README.md)"]


def test_full_size_model_on_auto_without_cuda_is_refused_before_model_work(capsys, monkeypatch, tmp_path):
    """args.device auto, no CUDA device, full-size model (weights present: the tiny files under the full-size
    config, whose shapes are checked only after the device): one line, before model work."""
    tiny_cfg = load_config([MODEL_CONFIG, TINY_MODEL_CONFIG], require_prompts=False)
    ensure_synthetic_checkpoints(tiny_cfg)
    tiny = weight_paths(tiny_cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    error = user_error(capsys, sample_video.main, [
        *BASE, "--custom-config", ROSE, f"args.output_dir={tmp_path / 'out'}", f"args.load={tiny['transformer']}",
        f"model.first_stage_config.ckpt_path={tiny['vae']}", f"model.conditioner_config.params.model_dir={tiny['t5']}"])
    assert error == ("error: args.device is auto but no CUDA device was found, and a full-size model takes hours per "
                     "video on the CPU; args.device=cpu runs it on the CPU anyway (--tiny runs the tiny model)")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_dir(out, capsys):
    blocker = out / "a_file"
    blocker.write_text("not a folder")
    assert str(blocker / "sub") in user_error(capsys, edit, "inference_case_configs/edit/bus_truck.yaml",
                                              f"args.output_dir={blocker / 'sub'}")


def test_edit_needs_two_prompts(out, capsys):
    assert "exactly 2 prompts" in user_error(capsys, edit, "inference_case_configs/edit/bus_truck.yaml",
                                             f"args.output_dir={out / 'edit3'}", "args.prompts=[a,b,c]")


def test_reweight_needs_equal_token_counts(out, capsys):
    assert "same number of tokens" in user_error(capsys, edit, "inference_case_configs/reweight/balloon_red_0.yaml",
                                                 f"args.output_dir={out / 'rw'}", "args.prompts=[a red cat,a cat]")


def test_existing_outputs_are_announced(out, capsys):
    target = out / "again"
    edit("inference_case_configs/edit/bus_truck.yaml", f"args.output_dir={target}", "model.sampler_config.params.num_steps=3")
    capsys.readouterr()
    edit("inference_case_configs/edit/bus_truck.yaml", f"args.output_dir={target}", "model.sampler_config.params.num_steps=3")
    assert f"overwriting existing {target / 'editing_frames49.mp4'}" in capsys.readouterr().out


def test_edit_refuses_the_visualiser(out, capsys):
    assert "sample_video_edit.py cannot run VisualizeAdaLNMixin" in user_error(
        capsys, edit, "inference_case_configs/edit/bus_truck.yaml", f"args.output_dir={out / 'edit_vis'}",
        "args.adaln_mixin_names=[VisualizeAdaLNMixin]")


@pytest.mark.parametrize("argv, code, error", [
    (["--help"], 0, None),
    (["args.seed=0"], 2, "error: args.seed must be > 0"),
    (["args.load=/no/such/weights"], 2, "error: missing checkpoint /no/such/weights; "),
    ([f"args.load={REPO}/configs"], 2, f"error: {REPO}/configs is neither a diffusers folder"),
    (["--tiny", "args.load=/no/such/weights"], 2, "error: refusing to write random weights into /no/such/weights: "),
])
def test_help_config_errors_and_missing_weights_import_no_torch(argv, code, error):
    """--help, config errors, missing or unrecognised weights and a folder the --tiny writer must not make answer
    before torch, SAT or transformers are imported."""
    probe = ("import sys; sys.path.insert(0, 'sat'); import sample_video\n"
             "try:\n    sample_video.main(sys.argv[1:])\n"
             "except SystemExit as stop:\n"
             "    heavy = sorted({'torch', 'sat', 'transformers'} & set(sys.modules))\n"
             "    print('heavy:', heavy); sys.exit(stop.code)")
    result = subprocess.run([sys.executable, "-c", probe, *BASE, "--custom-config", ROSE, *argv],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stderr
    assert "heavy: []" in result.stdout
    if error:
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(error), result.stderr


def test_a_tiny_run_s_params_yaml_reruns_on_the_cpu_without_tiny(tmp_path, monkeypatch):
    """Whether `device: auto` may fall back to the CPU follows the model's size, not the --tiny flag: the tiny
    model's params.yaml is a complete config that reruns as it is; a full-size model is refused (test_config)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    first, again = tmp_path / "first", tmp_path / "again"
    with OutputRun():
        *_, device = prepare_run("sample_video_edit", [*BASE, "--custom-config", EDIT_CASE, "--tiny",
                                                       f"args.output_dir={first}"])
    with OutputRun():
        *_, rerun_device = prepare_run("sample_video_edit", ["--base", str(first / "params.yaml"), "--",
                                                             f"args.output_dir={again}"])
    assert device == rerun_device == "cpu"


def test_earlier_runs_files_left_in_the_folders_are_named_nested_ones_too(tmp_path, capsys):
    """params.yaml describes the run's own files; what other runs left in its folders, at any depth (another
    controller's video, a longer run's masks under attn_map/), is named in one note once the run's files are all
    written; what the run wrote itself is not."""
    target = tmp_path / "edit"
    leftovers = ["editing_KVSharingAdaLNMixin_frames49.mp4", "isolated/all_frames98.mp4", "notes.txt",
                 "attn_map/segment0/mask_s_step3_layer25_all_frames.png"]  # a 4-step run's, beside this 3-step one's
    ours = ["editing_frames49.mp4", "params.yaml", "attn_map/segment0/mask_t_step2_layer29_all_frames.png"]
    for name in leftovers + ours:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(b"")
    with OutputRun():
        edit(EDIT_CASE, f"args.output_dir={target}", "model.sampler_config.params.num_steps=3", "args.start_step=1",
             "args.adaln_mixin_names=[KVSharingMaskGuidedAdaLNMixin]")
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: the run's folders")]
    shown = sorted(leftovers)
    assert notes == [f"note: the run's folders also hold what earlier runs wrote and this run left as it was "
                     f"({', '.join(shown[:3])} and 1 more); {target / 'params.yaml'} describes this run's files only"]
    assert all((target / name).stat().st_size > 0 for name in ours)  # rewritten by this run


def test_the_run_size_estimate_counts_the_files_and_windows_of_a_real_run(tmp_path):
    """run_size's closed forms against a run: windows and latent frames are its plan's, the file count the files it
    wrote (the masks of every pair, step and layer, the isolated clips, the video, params.yaml)."""
    argv = [*BASE, "--custom-config", ROSE, "--tiny", f"args.output_dir={tmp_path / 'rose'}", "args.start_step=1",
            "model.sampler_config.params.num_steps=2", "args.num_transition_blocks=1", "args.is_run_isolated=True",
            "args.adaln_mixin_names=[KVSharingMaskGuidedAdaLNMixin]", "--prompts", "a red rose", "a white rose"]
    with OutputRun():
        sample_video.main(argv)
    cfg = parse_cli(argv)
    size = run_size(ENTRY_POINTS["sample_video"], cfg, on_gpu=False)
    layout = plan_run(ENTRY_POINTS["sample_video"], cfg.args, expand_prompts(cfg.args)).layout
    assert (size.windows, size.latent_frames, size.video_frames) == (layout.num_windows, layout.length,
                                                                     layout.video_frames) == (3, 21, 81)
    written = [name for _, _, files in os.walk(tmp_path / "rose") for name in files]
    assert size.files == len(written) == 2 * 1 * 5 * 2 + 1 + 3 + 1  # pairs x steps x layers x 2 masks, the videos


@pytest.mark.parametrize("fp16", [True, False])
def test_float16_on_the_cpu_is_announced(tmp_path, capsys, monkeypatch, fp16):
    """args.fp16=True computing on the CPU (emulated float16: many times slower) gets one note; float32 none."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with OutputRun():
        prepare_run("sample_video_edit", [*BASE, "--custom-config", EDIT_CASE, "--tiny", f"args.fp16={fp16}",
                                          f"args.output_dir={tmp_path}"])
    notes = [line for line in capsys.readouterr().out.splitlines() if "float16" in line]
    assert notes == (["note: args.fp16 is True but the run computes on the CPU, where float16 is emulated on most "
                      "CPUs and runs many times slower than float32; args.fp16=False computes in float32"] if fp16
                     else [])


def seen_lines(result) -> tuple[list, list]:
    """(stdout lines, stderr lines) of a finished run as a terminal shows them, less the progress bar's redraws."""
    err = [part for part in re.split(r"[\r\n]", result.stderr) if part.strip() and not PROGRESS_BAR.fullmatch(part)]
    return result.stdout.splitlines(), err


EDIT_VIDEOS = {"editing_frames49.mp4": (49, 32, 96), "editing_source_frames49.mp4": (49, 32, 48),
               "editing_target_frames49.mp4": (49, 32, 48)}
VISUALISED = ["overview.png", *sorted(f"step2_layer{layer}" for layer in (4, 14, 24, 29))]
ORIGINAL_FORMAT_RUNS = {
    # case file: (run script, extra overrides, videos with their (frames, height, width), notes after the tiny note,
    #             other folders: their entries, or how many)
    "multi_prompts/kite_overlap_6_1.yaml": ("run_multi_prompt.sh", [], {"MultiPrompt_frames161.mp4": (161, 32, 48)},
                                           [], {}),
    "multi_prompts/grey_cat_mask_guided.yaml": (  # 3 steps: step 2 controlled, layers 25-29, 4 windows
        "run_multi_prompt.sh", [], {"MultiPrompt_frames97.mp4": (97, 32, 48)},
        ["note: KVSharingMaskGuidedAdaLNMixin writes 30 mask PNGs (controlled steps 1 x layers 5 x window pairs 3 x "
         "source and target) to {out}/attn_map; args.save_masks=False writes none"],
        {"attn_map": ["segment0", "segment1", "segment2"], "attn_map/segment0": 10, "attn_map/segment1": 10,
         "attn_map/segment2": 10}),
    "single_prompt/lantern_x5.yaml": ("run_single_prompt.sh", [], {"MultiPrompt_frames241.mp4": (241, 32, 48)}, [],
                                      {}),
    "reweight/teapot_0.yaml": ("run_reweight_video.sh", [], EDIT_VIDEOS, [], {}),
    "edit/owl_hawk.yaml": (
        "run_edit_video.sh", [], EDIT_VIDEOS,
        ["note: keys of the original DiTCtrl without effect here: is_edit (every controller is told the true sampler "
         "step: what is_edit: True gave the original's edit script and is_edit: False its multi-prompt script)"], {}),
    "visualization_configs/owl_branch.yaml": (  # the original's maps at step 25 need 26 steps: here step 2 of 3
        "run_visualize.sh", ["args.attn_map_step_idx=[2]"], {"visualization_frames49.mp4": (49, 32, 48)},
        [f"saved attention maps of step 2, layer {layer} (mean of layers 0-{layer}) to "
         f"{{out}}/attn_map/step2_layer{layer}" for layer in (4, 14, 24, 29)],
        {"attn_map": VISUALISED, "attn_map/step2_layer4": [
            "spatial_attn_map_frame6.npy", "spatial_attn_map_frame6.png", "temporal_attn_map_pos_1_1.npy",
            "temporal_attn_map_pos_1_1.png", "text_attn_map.npy", "text_attn_map.png",
            "token_attention_vertical_step_2_layer_4_selected_frame_10_first_6_tokens.png"]}),
}
ENTRY_OF_SCRIPT = {"run_multi_prompt.sh": "sample_video.py", "run_single_prompt.sh": "sample_video.py",
                   "run_edit_video.sh": "sample_video_edit.py", "run_reweight_video.sh": "sample_video_edit.py",
                   "run_visualize.sh": "sample_video_visualize.py"}


@pytest.mark.parametrize("case", ORIGINAL_FORMAT_RUNS)
def test_a_case_in_the_original_s_format_runs_and_shows_one_clean_line_per_event(tmp_path, case):
    """Through the run script with --tiny: the case's videos and files, and exactly these lines: the command, the
    notes, one `wrote` per file; no library warning or loading bar (stderr holds the progress bar alone)."""
    ensure_synthetic_checkpoints(load_config([MODEL_CONFIG, TINY_MODEL_CONFIG], require_prompts=False))
    script, extra, videos, notes, folders = ORIGINAL_FORMAT_RUNS[case]
    out = tmp_path / "out"
    overrides = [f"args.output_dir={out}", "model.sampler_config.params.num_steps=3", *extra]
    case_file = os.path.join(ORIGINAL_FORMAT, case)
    result = run_script(script, case_file, "--tiny", *overrides)
    command = ["python", f"sat/{ENTRY_OF_SCRIPT[script]}", *BASE, "--custom-config", case_file, "--tiny", *overrides]
    wrote = [f"wrote {out / name}" for name in videos] + [f"wrote {out}/attn_map/{name}" for name in
                                                          folders.get("attn_map", []) if name.endswith(".png")]
    seen = seen_lines(result)
    assert seen == ([shlex.join(command), TINY_NOTE, *(note.format(out=out) for note in notes), *wrote], []), seen
    for name, shape in videos.items():
        assert frames_of(out / name).shape == (*shape, 3)
    for folder, entries in folders.items():
        listing = sorted(os.listdir(out / folder))
        assert (len(listing) if isinstance(entries, int) else listing) == entries


def test_the_echoed_command_reads_back_as_the_arguments_given(tmp_path):
    prompts = ["it's a \"red\" car; $HOME", "a blue car  with  spaces", "🌹"]
    result = run_script("run_edit_video.sh", "--tiny", f"args.output_dir={tmp_path}", "args.seed=0",
                        "--prompts", *prompts, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: args.seed must be > 0")
    assert shlex.split(result.stdout.splitlines()[0]) == [
        "python", "sat/sample_video_edit.py", *BASE, "--custom-config", os.path.join(REPO, EDIT_CASE), "--tiny",
        f"args.output_dir={tmp_path}", "args.seed=0", "--prompts", *prompts]


def test_a_direct_python_run_gets_the_short_openmp_spin_wait_and_no_deepspeed_warning():
    """`python sat/...` without a run script, here make_synthetic_checkpoint.py --help (it imports torch and SAT, hence
    DeepSpeed): libgomp, which reads GOMP_SPINCOUNT when torch loads it, got 1000; DeepSpeed's guess that it runs on
    the CPU is not printed."""
    environment = {key: value for key, value in os.environ.items() if key != "GOMP_SPINCOUNT"}
    result = subprocess.run([sys.executable, "sat/make_synthetic_checkpoint.py", "--help"], cwd=REPO, text=True,
                            capture_output=True, timeout=120, env={**environment, "OMP_DISPLAY_ENV": "VERBOSE"})
    assert result.returncode == 0 and result.stdout.startswith("usage: ") and "WARNING" not in result.stdout
    assert "GOMP_SPINCOUNT = '1000'" in result.stderr


def test_the_plan_carries_each_prompt_s_pieces_for_the_figure_labels(tmp_path):
    """prepare_run hands the generation each prompt's T5 pieces by index: SentencePiece's pieces, then </s>."""
    import sentencepiece
    with OutputRun():
        cfg, plan, _ = prepare_run("sample_video_edit", [*BASE, "--custom-config", EDIT_CASE, "--tiny",
                                                         f"args.output_dir={tmp_path}"])
    spm = sentencepiece.SentencePieceProcessor(model_file=os.path.join(weight_paths(cfg)["tokenizer"], "spiece.model"))
    context = cfg.model.conditioner_config.params.max_length
    assert plan.prompt_pieces == tuple(
        tuple([spm.id_to_piece(i) for i in spm.encode(prompt)][:context - 1] + ["</s>"]) for prompt in cfg.args.prompts)
