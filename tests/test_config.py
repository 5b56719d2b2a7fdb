import os
import re

import pytest
import torch
import yaml

from ditctrl import config
from ditctrl.config import (
    ConfigError,
    check_dtype_on_device,
    check_index_range,
    expand_prompts,
    load_config,
    parse_cli,
    prepare_output_dir,
    resolve_device,
    write_resolved_config,
)
from ditctrl.entry_points import ENTRY_POINTS, plan_run
from ditctrl.output_files import temporary_path
from ditctrl.weights import weight_paths

# Spec ditctrl.md §2.2: the reference inference.yaml `args`, key for key, less the keys that no longer do anything.
RETIRED = {"mode": "inference", "batch_size": 1, "force_inference": True, "is_edit": False}
REFERENCE_DEFAULTS = {
    "latent_channels": 16, "load": "CogVideoX-2b-sat/transformer",
    "sampling_num_frames": 13, "sampling_fps": 16, "fp16": True,
    "is_run_isolated": False, "seed": 42, "output_dir": "outputs/multi_prompt_case",
    "adaln_mixin_names": ["KVSharingAdaLNMixin"], "start_step": 2, "end_step": 25,
    "start_layer": 25, "end_layer": 30, "layer_idx": None, "step_idx": None, "thres": 0.3,
    "attn_map_step_idx": [4, 14, 24, 34, 44, 49], "attn_map_layer_idx": [4, 14, 24, 29], "mask_save_dir": "",
    "overlap_size": 9, "num_transition_blocks": 2, "longer_mid_segment": 0, "ref_token_idx": [0],
    "cur_token_idx": [0], "single_prompt_length": 0, "reweight_token_idx": 0, "reweight_scale": -5,
}
ADDED_DEFAULTS = {
    "prompts": None, "bf16": False, "device": "auto", "reweight_kv_switch_step": 2, "reweight_additive": False,
    "attention_backend": "auto",
    "share_unshared_work": True, "offload": False, "vae_chunked_decode": True, "compile_dit": False,
    "attn_map_token_idx": [0, 1, 2, 3, 4, 5],
}
ONE_PROMPT = 'args.prompts=["a cat on a sofa"]'


def write_yaml(directory, name, content):
    path = str(directory / name)
    with open(path, "w") as handle:
        yaml.safe_dump(content, handle)
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def test_inference_yaml_holds_the_reference_defaults_plus_the_added_keys():
    with open(config.INFERENCE_CONFIG) as handle:
        defaults = yaml.safe_load(handle)["args"]
    assert defaults == {**REFERENCE_DEFAULTS, **ADDED_DEFAULTS}
    assert {key: type(value) for key, value in defaults.items()} == {
        key: type(value) for key, value in {**REFERENCE_DEFAULTS, **ADDED_DEFAULTS}.items()
    }


def test_every_inference_key_has_a_comment():
    with open(config.INFERENCE_CONFIG) as handle:
        key_lines = [line for line in handle if re.match(r"^  \w+:", line)]
    assert len(key_lines) == len(REFERENCE_DEFAULTS) + len(ADDED_DEFAULTS)
    assert all(re.search(r"\S  # \S", line) for line in key_lines), key_lines


def test_schema_types_come_from_defaults_and_declarations():
    descriptions = {key: kind.description for key, kind in config.argument_schema().items()}
    assert list(descriptions) == list({**REFERENCE_DEFAULTS, **ADDED_DEFAULTS})
    assert descriptions["seed"] == "an int"
    assert descriptions["thres"] == "a number"
    assert descriptions["fp16"] == "a bool"
    assert descriptions["attn_map_step_idx"] == "a list of ints"
    assert descriptions["layer_idx"] == "null or a list of ints"
    assert descriptions["prompts"] == "null or a list of strings"
    assert descriptions["reweight_scale"] == "a number"


def test_loaded_values_are_normalised():
    args = load_config([], overrides=[ONE_PROMPT, "args.thres=1", "args.ref_token_idx=3", "args.reweight_token_idx=5",
                                      "args.cur_token_idx=[1,2]"]).args
    assert args.thres == 1.0 and isinstance(args.thres, float)
    assert args.reweight_scale == -5.0 and isinstance(args.reweight_scale, float)
    assert list(args.ref_token_idx) == [3]
    assert list(args.cur_token_idx) == [1, 2]
    assert args.reweight_token_idx == 5


def test_merge_precedence_inference_then_bases_then_case_then_overrides(tmp_path):
    base_a = write_yaml(tmp_path, "a.yaml", {
        "model": {"net": {"depth": 2, "width": 8}},
        "args": {"seed": 1, "overlap_size": 3, "thres": 0.5, "prompts": ["from base"]},
    })
    base_b = write_yaml(tmp_path, "b.yaml", {"model": {"net": {"depth": 4}}, "args": {"seed": 2, "overlap_size": 4}})
    case = write_yaml(tmp_path, "case.yaml", {"args": {"seed": 3, "prompts": ["from case"]}})

    assert load_config([base_a]).args.seed == 1
    assert load_config([base_a, base_b]).args.seed == 2
    assert load_config([base_a, base_b], case).args.seed == 3
    merged = load_config([base_a, base_b], case, ["args.seed=4", "model.net.width=16"])
    assert merged.args.seed == 4
    assert merged.args.overlap_size == 4
    assert merged.args.thres == 0.5
    assert merged.args.sampling_fps == 16  # inference.yaml
    assert list(merged.args.prompts) == ["from case"]
    assert dict(merged.model.net) == {"depth": 4, "width": 16}


def test_lists_are_replaced_not_concatenated(tmp_path):
    base = write_yaml(tmp_path, "base.yaml", {
        "model": {"samplers": ["a", "b"]}, "args": {"attn_map_layer_idx": [1, 2, 3], "prompts": ["x", "y"]},
    })
    case = write_yaml(tmp_path, "case.yaml", {"model": {"samplers": ["c"]}, "args": {"attn_map_layer_idx": [7]}})
    merged = load_config([base], case, ['args.prompts=["z"]'])
    assert list(merged.args.attn_map_layer_idx) == [7]
    assert list(merged.model.samplers) == ["c"]
    assert list(merged.args.prompts) == ["z"]


def test_unknown_key_names_key_file_and_closest_key(tmp_path):
    case = write_yaml(tmp_path, "x.yaml", {"args": {"overlap-size": 3}})
    assert error_of(load_config, [], case) == (
        f"unknown key 'overlap-size' in {case} (args); did you mean 'overlap_size'?"
    )
    base = write_yaml(tmp_path, "base.yaml", {"args": {"sampling_frames": 13}})
    assert error_of(load_config, [base], case) == (
        f"unknown key 'sampling_frames' in {base} (args); did you mean 'sampling_num_frames'?"
    )
    assert error_of(load_config, [], None, [ONE_PROMPT, "args.zzz=1"]) == "unknown key 'zzz' in command line (args)"


def test_unknown_section_is_rejected_with_a_hint(tmp_path):
    forgot_args = write_yaml(tmp_path, "seed.yaml", {"seed": 3})
    assert error_of(load_config, [], forgot_args) == (
        f"unknown section 'seed' in {forgot_args}; did you mean 'args.seed'? (allowed: args, model)"
    )
    typo = write_yaml(tmp_path, "modle.yaml", {"modle": {}})
    assert error_of(load_config, [], typo) == (
        f"unknown section 'modle' in {typo}; did you mean 'model'? (allowed: args, model)"
    )


@pytest.mark.parametrize("override, message", [
    ("args.seed=abc", "args.seed must be an int, got 'abc' (str) in command line"),
    ("args.seed=2.5", "args.seed must be an int, got 2.5 (float) in command line"),
    ('args.fp16="False"', "args.fp16 must be a bool, got 'False' (str) in command line"),
    ("args.thres=true", "args.thres must be a number, got True (bool) in command line"),
    ("args.layer_idx=3", "args.layer_idx must be null or a list of ints, got 3 (int) in command line"),
    ("args.attn_map_layer_idx=[1,x]",
     "args.attn_map_layer_idx must be a list of ints, got [1, 'x'] (list) in command line"),
    ('args.prompts="one string"',
     "args.prompts must be null or a list of strings, got 'one string' (str) in command line"),
])
def test_wrong_types_are_rejected(override, message):
    assert error_of(load_config, [], None, [ONE_PROMPT, override]) == message


def test_wrong_type_in_a_file_names_the_file(tmp_path):
    case = write_yaml(tmp_path, "case.yaml", {"args": {"seed": "abc"}})
    assert error_of(load_config, [], case) == f"args.seed must be an int, got 'abc' (str) in {case}"


@pytest.mark.parametrize("overrides, message", [
    (["args.overlap_size=-1"], "args.overlap_size must be >= 0, got -1"),
    (["args.seed=0"], "args.seed must be > 0, got 0"),
    (["args.sampling_num_frames=0", "args.overlap_size=0"], "args.sampling_num_frames must be > 0, got 0"),
    (["args.num_transition_blocks=-1"], "args.num_transition_blocks must be >= 0, got -1"),
    (["args.longer_mid_segment=-2"], "args.longer_mid_segment must be >= 0, got -2"),
    (["args.thres=1.5"], "args.thres must lie in [0, 1], got 1.5"),
    (["args.start_step=25"], "args.start_step (25) must be smaller than args.end_step (25)"),
    (["args.start_layer=30"], "args.start_layer (30) must be smaller than args.end_layer (30)"),
    (["args.ref_token_idx=[0,-1]"], "args.ref_token_idx contains -1; allowed: 0 or more"),
    (["args.bf16=true"], "args.fp16 and args.bf16 are both True; choose one"),
    (["args.device=gpu"], "args.device must be auto, cpu, cuda or cuda:<index>, got 'gpu'"),
    (["args.adaln_mixin_names=[KVSharingAdaLnMixin]"],
     "unknown controller 'KVSharingAdaLnMixin' in args.adaln_mixin_names; did you mean 'KVSharingAdaLNMixin'?"),
    (["args.adaln_mixin_names=[Nothing]"],
     "unknown controller 'Nothing' in args.adaln_mixin_names; choices: BaseAdaLNMixin, KVSharingAdaLNMixin, "
     "KVSharingMaskGuidedAdaLNMixin, ReferenceAttentionAdaLNMixin, ReWeightAdaLNMixin, VisualizeAdaLNMixin"),
    (["args.adaln_mixin_names=[]"], "args.adaln_mixin_names is empty: name at least one controller"),
    (["args.adaln_mixin_names=[KVSharingAdaLNMixin,BaseAdaLNMixin,KVSharingAdaLNMixin]"],
     "args.adaln_mixin_names lists KVSharingAdaLNMixin more than once; each controller runs once per run"),
    (["args.step_idx=[]"], "args.step_idx is empty: give at least one index"),
    (["args.layer_idx=[]"], "args.layer_idx is empty: give at least one index"),
    (['args.prompts=["a", "b"]', "args.single_prompt_length=3"],
     "args.single_prompt_length (3) > 0 needs exactly one prompt, got 2"),
    (['args.prompts=["a", " "]'], "args.prompts[1] is empty"),
    (["args.prompts=null"], "args.prompts is not set: give a list of prompts in the case file or with --prompts"),
])
def test_semantic_errors(overrides, message):
    error = error_of(load_config, [], None, [ONE_PROMPT, *overrides])
    assert error == message


def test_overlap_matters_only_where_windows_overlap():
    """overlap_size is a long video's setting: edit, reweight and visualisation (one clip) ignore it; a long plan
    refuses an overlap that is not smaller than the tile."""
    args = load_config([], None, [ONE_PROMPT, "args.sampling_num_frames=9", "args.overlap_size=9"]).args
    assert plan_run(ENTRY_POINTS["sample_video_visualize"], args, ["a cat"]).decoded_frames == 33
    with pytest.raises(ValueError, match=re.escape("overlap_size (9) must be >= 0 and smaller than the tile "
                                                   "sampling_num_frames (9)")):
        plan_run(ENTRY_POINTS["sample_video"], args, ["a cat", "a dog"])


def test_isolated_clip_names_fit_a_file_name():
    """The original's stem (first 120 characters) of a CJK prompt is 360 bytes; the file names stay under 255."""
    args = load_config([], None, [ONE_PROMPT, "args.is_run_isolated=true"]).args
    prompts = ["玫瑰" * 100, "a red rose " * 20]
    clips = plan_run(ENTRY_POINTS["sample_video"], args, prompts).isolated
    assert clips[0] == f"isolated/0_{'玫瑰' * 33}_frames49.mp4"  # 198 bytes of whole characters
    assert clips[1] == f"isolated/1_{('a_red_rose_' * 20)[:120]}_frames49.mp4"  # ASCII: the original's 120
    assert max(len(os.path.basename(temporary_path(clip)).encode()) for clip in clips) <= 255  # written under it


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_missing_or_malformed_files_are_named(tmp_path):
    missing = str(tmp_path / "nowhere.yaml")
    assert error_of(load_config, [], missing) == f"config file not found: {missing}"
    broken = tmp_path / "broken.yaml"
    broken.write_text("args: [unclosed\n")
    assert error_of(load_config, [str(broken)]).startswith(f"cannot parse {broken}: ")


def test_single_prompt_expansion_repeats_the_prompt_and_keeps_the_config():
    cfg = load_config([], overrides=['args.prompts=["a fish"]', "args.single_prompt_length=5"])
    assert expand_prompts(cfg.args) == ["a fish"] * 5
    assert list(cfg.args.prompts) == ["a fish"]
    two = load_config([], overrides=['args.prompts=["a", "b"]'])
    assert expand_prompts(two.args) == ["a", "b"]


def test_check_index_range():
    check_index_range("layer_idx", [0, 29], 30)
    check_index_range("layer_idx", None, 30)
    assert error_of(check_index_range, "layer_idx", [3, 30], 30) == "args.layer_idx contains 30; allowed: 0..29"
    assert error_of(check_index_range, "reweight_token_idx", 226, 226) == (
        "args.reweight_token_idx contains 226; allowed: 0..225"
    )


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    assert error_of(resolve_device, "cuda:1") == "args.device is 'cuda:1' but CUDA is not available; use auto or cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"


def test_cuda_index_must_name_a_device_of_this_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert error_of(resolve_device, "cuda:5") == (
        "args.device is 'cuda:5' but this machine has 2 CUDA device(s), cuda:0 to cuda:1")
    assert error_of(resolve_device, "cuda:2").startswith("args.device is 'cuda:2' but this machine has 2 ")


@pytest.mark.parametrize("capability, refused", [((7, 0), True), ((7, 5), True), ((8, 0), False), ((9, 0), False)])
def test_bf16_needs_a_gpu_with_bf16_kernels(monkeypatch, capability, refused):
    """The original was tested on V100s (7.0), which have no bfloat16 kernels; 5B defaults to bfloat16."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100-SXM2-32GB")
    if refused:
        assert error_of(check_dtype_on_device, torch.bfloat16, "cuda:0") == (
            "args.bf16 is True but Tesla V100-SXM2-32GB (cuda:0) has no bfloat16 kernels; run in float16: "
            "args.bf16=False args.fp16=True")
    else:
        check_dtype_on_device(torch.bfloat16, "cuda:0")
    check_dtype_on_device(torch.float16, "cuda:0")
    check_dtype_on_device(torch.bfloat16, "cpu")


def test_full_size_model_never_falls_back_to_the_cpu_unasked(monkeypatch):
    """auto without CUDA: the tiny model runs on the CPU, a full-size one is refused unless args.device=cpu."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", full_size=False) == "cpu"
    assert resolve_device("cpu", full_size=True) == "cpu"
    assert error_of(resolve_device, "auto", full_size=True) == (
        "args.device is auto but no CUDA device was found, and a full-size model takes hours per video on the CPU; "
        "args.device=cpu runs it on the CPU anyway (--tiny runs the tiny model)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", full_size=True) == "cuda"


def test_user_paths_expand_the_home_folder(monkeypatch, tmp_path):
    """`~` in the case file's path, in a case file's values and in key=~/x overrides is the home folder: the
    weights are looked for there and the outputs go there, never into a folder named `~`."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    write_yaml(home, "case.yaml", {"args": {"output_dir": "~/out", "prompts": ["a cat"]}})
    cfg = parse_cli(["--base", config.MODEL_CONFIG, "--custom-config", "~/case.yaml", "args.load=~/weights",
                     "args.mask_save_dir=~/masks", "model.first_stage_config.ckpt_path=~/vae/3d-vae.pt",
                     "model.conditioner_config.params.model_dir=~/t5"])
    assert (cfg.args.output_dir, cfg.args.mask_save_dir) == (str(home / "out"), str(home / "masks"))
    paths = weight_paths(cfg)
    assert (paths["transformer"], paths["vae"], paths["t5"]) == (
        str(home / "weights"), str(home / "vae" / "3d-vae.pt"), str(home / "t5"))
    prepare_output_dir(cfg.args.output_dir, [], [cfg.args.mask_save_dir])
    assert (home / "out").is_dir() and (home / "masks").is_dir() and os.listdir(work) == []


def test_output_dir_that_cannot_be_created_is_named(tmp_path):
    regular_file = tmp_path / "file"
    regular_file.write_text("")
    output_dir = str(regular_file / "out")
    assert error_of(prepare_output_dir, output_dir, []) == f"output_dir '{output_dir}' is not writable: Not a directory"


def test_output_dir_is_created_and_existing_files_reported(tmp_path):
    output_dir = tmp_path / "runs" / "rose"
    assert prepare_output_dir(str(output_dir), ["MultiPrompt_frames145.mp4"]) == []
    assert output_dir.is_dir() and os.listdir(output_dir) == []  # the probe file is gone
    (output_dir / "isolated").mkdir()
    (output_dir / "isolated" / "all_frames147.mp4").write_bytes(b"")
    (output_dir / "MultiPrompt_frames145.mp4").write_bytes(b"")
    planned = ["MultiPrompt_frames145.mp4", "isolated/0_a_frames49.mp4", "isolated/all_frames147.mp4"]
    assert prepare_output_dir(str(output_dir), planned) == [
        str(output_dir / "MultiPrompt_frames145.mp4"),
        str(output_dir / "isolated/all_frames147.mp4"),
    ]


def test_params_yaml_reloads_to_an_equal_config_and_announces_replacement(tmp_path, capsys):
    base = write_yaml(tmp_path, "base.yaml", {"model": {"net": {"depth": 2, "dims": [8, 16]}}})
    cfg = load_config([base], None, ['args.prompts=["a: b, c", "d \\"e\\""]', "args.layer_idx=[25, 27]"])
    output_dir = str(tmp_path / "out")
    prepare_output_dir(output_dir, [])
    path = write_resolved_config(cfg, output_dir)
    assert path == os.path.join(output_dir, "params.yaml")
    assert capsys.readouterr().out == ""
    assert load_config([path]) == cfg
    write_resolved_config(cfg, output_dir)
    assert capsys.readouterr().out == f"overwriting existing {path}\n"


def test_parse_cli_merges_files_prompts_and_overrides(tmp_path):
    base = write_yaml(tmp_path, "base.yaml", {"model": {"net": {"depth": 2}}, "args": {"seed": 5}})
    case = write_yaml(tmp_path, "case.yaml", {"args": {"overlap_size": 6, "prompts": ["replaced"]}})
    prompts = ['A rose, in bloom: "close-up"', "Café at night"]
    cfg = parse_cli(["args.sampling_fps=8", "--base", base, "--custom-config", case, "--prompts", *prompts])
    assert list(cfg.args.prompts) == prompts
    assert (cfg.args.seed, cfg.args.overlap_size, cfg.args.sampling_fps) == (5, 6, 8)
    assert cfg.model.net.depth == 2


def test_parse_cli_tiny_appends_the_tiny_files_before_the_case(tmp_path, monkeypatch):
    base = write_yaml(tmp_path, "base.yaml", {"model": {"net": {"depth": 30, "width": 1920}}})
    tiny_model = write_yaml(tmp_path, "tiny.yaml", {"model": {"net": {"depth": 2}},
                                                    "args": {"sampling_num_frames": 5, "overlap_size": 2}})
    case = write_yaml(tmp_path, "case.yaml", {"args": {"overlap_size": 3, "prompts": ["p"]}})
    monkeypatch.setattr(config, "TINY_MODEL_CONFIG", tiny_model)
    cfg = parse_cli(["--base", base, "--custom-config", case, "--tiny"])
    assert dict(cfg.model.net) == {"depth": 2, "width": 1920}
    assert (cfg.args.sampling_num_frames, cfg.args.overlap_size) == (5, 3)
    assert parse_cli(["--base", base, "--custom-config", case]).model.net.depth == 30


def test_parse_cli_defaults_to_the_model_config_and_names_a_missing_case(tmp_path, monkeypatch):
    model = write_yaml(tmp_path, "model.yaml", {"model": {"net": {"depth": 30}}})
    monkeypatch.setattr(config, "MODEL_CONFIG", model)
    assert parse_cli(["--prompts", "a dog"]).model.net.depth == 30
    missing = str(tmp_path / "cases" / "rose.yaml")
    assert error_of(parse_cli, ["--custom-config", missing, "--prompts", "a dog"]) == (
        f"config file not found: {missing}"
    )


def test_case_and_command_line_may_only_change_existing_model_keys(tmp_path):
    base = write_yaml(tmp_path, "base.yaml", {"model": {"sampler_config": {"params": {"num_steps": 50}}}})
    case = write_yaml(tmp_path, "case.yaml", {"model": {"sampler_config": {"params": {"num_step": 20}}},
                                              "args": {"prompts": ["p"]}})
    assert error_of(load_config, [base], case) == (
        f"unknown key 'model.sampler_config.params.num_step' in {case}; did you mean 'num_steps'?")
    assert error_of(load_config, [base], None, ["model.sampler.params.num_steps=3", ONE_PROMPT]) == (
        "unknown key 'model.sampler' in command line; did you mean 'sampler_config'?")
    merged = load_config([base], None, ["model.sampler_config.params.num_steps=3", ONE_PROMPT])
    assert merged.model.sampler_config.params.num_steps == 3


@pytest.mark.parametrize("key, value", RETIRED.items())
def test_retired_keys_of_the_original_say_what_to_do(tmp_path, key, value):
    case = write_yaml(tmp_path, "copied.yaml", {"args": {key: value}})
    message = error_of(load_config, [config.MODEL_CONFIG], case, [ONE_PROMPT])
    assert message.startswith(f"args.{key} in {case} is no longer used (") and "delete it" in message
