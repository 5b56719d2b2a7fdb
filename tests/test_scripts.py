"""The entry points end to end on the tiny random-weight model (few sampler steps to keep CI fast).

Three cases go through the run_*.sh scripts as a user would call them; the rest call the same
entry functions in-process, which saves the interpreter start-up of every run.
"""
import os
import subprocess
import sys

import imageio.v3 as iio
import pytest
import torch
import yaml

import sample_video
import sample_video_edit
from ditctrl.config import MODEL_CONFIG, TINY_MODEL_CONFIG, load_config
from ditctrl.output_files import OutputRun
from ditctrl.runs import prepare_run
from ditctrl.synthetic_folders import ensure_synthetic_checkpoints
from ditctrl.weights import weight_paths
from repo_paths import BASE, REPO

FAST = ["model.sampler_config.params.num_steps=4"]
ROSE = "inference_case_configs/multi_prompts/rose.yaml"
EDIT_CASE = "inference_case_configs/edit/bus_truck.yaml"


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


def test_single_prompt_long_video(out):
    target = out / "single"
    multi_prompt("inference_case_configs/single_prompt/jellyfish.yaml", f"args.output_dir={target}", *FAST)
    assert frames_of(target / "MultiPrompt_frames241.mp4").shape == (241, 32, 48, 3)  # 5 prompts, 13 windows


def test_mask_guided_case_writes_masks(out):
    target = out / "masks"
    multi_prompt("inference_case_configs/multi_prompts/horse_beach_snow.yaml", f"args.output_dir={target}", *FAST)
    assert frames_of(target / "MultiPrompt_frames97.mp4").shape[0] == 97
    masks = sorted(os.listdir(target / "attn_map" / "segment0"))
    # controlled steps 2, 3 (of 4) x layers 25..29 x source/target
    assert len(masks) == 20 and "mask_s_step2_layer25_all_frames.png" in masks
    assert sorted(os.listdir(target / "attn_map")) == ["segment0", "segment1", "segment2"]
    assert iio.imread(target / "attn_map" / "segment1" / "mask_t_step3_layer29_all_frames.png").shape == (2, 39, 3)


def test_word_swap_edit(out):
    target = out / "edit"
    run_script("run_edit_video.sh", "--tiny", f"args.output_dir={target}", *FAST)
    assert frames_of(target / "editing_frames49.mp4").shape == (49, 32, 96, 3)
    for role in ("source", "target"):
        assert frames_of(target / f"editing_{role}_frames49.mp4").shape == (49, 32, 48, 3)


def test_reweight_edit(out):
    target = out / "reweight"
    edit("inference_case_configs/reweight/balloon_red_0.yaml", f"args.output_dir={target}", *FAST)
    assert frames_of(target / "editing_frames49.mp4").shape == (49, 32, 96, 3)


def test_visualize(out):
    target = out / "visualize"
    run_script("run_visualize.sh", "--tiny", f"args.output_dir={target}", "args.attn_map_step_idx=[2]",
               "args.attn_map_layer_idx=[3,29]", *FAST)
    assert frames_of(target / "visualization_frames49.mp4").shape == (49, 32, 48, 3)
    maps = sorted(os.listdir(target / "attn_map"))
    assert maps == ["overview.png", "step2_layer29", "step2_layer3"]
    names = sorted(os.listdir(target / "attn_map" / "step2_layer3"))
    assert "token_attention_vertical_step_2_layer_3_selected_frame_10_first_6_tokens.png" in names
    assert {"text_attn_map.npy", "spatial_attn_map_frame6.npy", "temporal_attn_map_pos_1_1.npy"} <= set(names)


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
        f"--tiny. In short: huggingface-cli download THUDM/{name} --local-dir sat/{name}"]


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
        f"error: {tmp_path} is neither a diffusers folder (model_index.json, e.g. from huggingface-cli download "
        "THUDM/CogVideoX-2b) nor a SAT transformer folder (latest + <iteration>/)"]


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


def test_earlier_runs_files_left_in_the_folder_are_named(tmp_path, capsys):
    """params.yaml describes the run's own files; what other runs left next to them is named at the start."""
    target = tmp_path / "edit"
    (target / "isolated").mkdir(parents=True)
    for name in ("editing_KVSharingAdaLNMixin_frames49.mp4", "editing_frames49.mp4", "params.yaml", "notes.txt"):
        (target / name).write_bytes(b"")
    with OutputRun():
        prepare_run("sample_video_edit", [*BASE, "--custom-config", EDIT_CASE, "--tiny", f"args.output_dir={target}"])
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("note: ", "overwriting "))]
    assert notes[-3:] == [
        f"overwriting existing {target / 'editing_frames49.mp4'}",
        f"note: {target} also holds what earlier runs wrote and this run leaves as it is "
        "(editing_KVSharingAdaLNMixin_frames49.mp4, isolated, notes.txt); its params.yaml will describe this run's "
        "files only",
        f"overwriting existing {target / 'params.yaml'}"]
