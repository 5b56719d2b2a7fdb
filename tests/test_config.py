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
from ditctrl.entry_points import ENTRY_POINTS, check_run, mask_files_note, plan_run
from ditctrl.output_files import temporary_path
from ditctrl.weights import weight_paths

# The original inference.yaml's `args` (docs/configuration.md, "Args keys"), key for key, less the keys that have no
# effect here (config.ORIGINAL_KEYS).
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
    "attn_map_token_idx": [0, 1, 2, 3, 4, 5], "save_masks": True,
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
    assert error_of(load_config, [], str(tmp_path)) == f"{tmp_path} is a folder, not a config file"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\x00\x01\xff\xfe")
    assert error_of(load_config, [str(binary)]) == (
        f"cannot parse {binary}: not a UTF-8 text file ('utf-8' codec can't decode byte 0xff in position 2: invalid "
        "start byte)")


@pytest.mark.parametrize("text, problem", [
    ("args:\n  seed: 1\n  seed: 2\n", "line 3, column 3: found duplicate key seed (while constructing a mapping from "
                                      "line 2)"),
    ("args:\n  seed: [1\n  fp16: true\n", "line 3, column 7: did not find expected ',' or ']' (while parsing a "
                                          "flow sequence from line 2)"),
    ("args:\n\tseed: 1\n", "line 2, column 1: found character that cannot start any token (while scanning for the "
                          "next token from line 2)"),
    ("args:\n  seed: \"7\n", "line 3, column 1: found unexpected end of stream (while scanning a quoted scalar from "
                            "line 2)"),
    ("args:\n  a\x00: 1\n", "character 10: unacceptable character #x0000: control characters are not allowed"),
])
def test_a_yaml_error_is_one_line_with_its_place_and_cause(tmp_path, text, problem):
    case = tmp_path / "case.yaml"
    case.write_text(text)
    assert error_of(load_config, [], str(case)) == f"cannot parse {case}: {problem}"


def test_an_override_yaml_error_gives_its_column_and_cause():
    assert error_of(load_config, [], None, [ONE_PROMPT, "args.layer_idx={a: 1, a: 2}"]) == (
        "cannot parse the command line overrides: line 1, column 8: found duplicate key a (while constructing a "
        "mapping from line 1)")


@pytest.mark.parametrize("source, message", [
    ("override", "the command line override 'args.output_dir=out\\nrun' holds a line break, which YAML reads as a "
                 "space; remove it (a prompt with line breaks goes after --prompts)"),
    ("case", "args.output_dir must be a path (a string without line breaks or other control characters), got "
             "'out\\nrun' (str) in {case}"),
    ("load null", "args.load must be a path (a string without line breaks or other control characters), got None "
                  "(NoneType) in command line"),
    ("vae path", "model.first_stage_config.ckpt_path must be a path (a string without line breaks or other control "
                 "characters), got 'vae\\t.pt' (str)"),
])
def test_a_path_with_a_line_break_or_no_path_is_refused(tmp_path, source, message):
    """YAML folds a line break in a command-line value into a space (another folder than the one typed); a path
    that holds one in a file, or a null args.load (it ended in TypeError from expanduser(None)), is refused."""
    case = write_yaml(tmp_path, "case.yaml", {"args": {"output_dir": "out\nrun"}})
    if source == "override":
        call = (load_config, [], None, [ONE_PROMPT, "args.output_dir=out\nrun"])
    elif source == "case":
        call = (load_config, [], case, [ONE_PROMPT])
    elif source == "load null":
        call = (load_config, [], None, [ONE_PROMPT, "args.load=null"])
    else:
        cfg = load_config([config.MODEL_CONFIG], None, [ONE_PROMPT, 'model.first_stage_config.ckpt_path="vae\\t.pt"'])
        call = (config.validate_model, cfg)
    assert error_of(*call) == message.format(case=case)


def test_a_prompt_s_line_breaks_never_reach_a_file_name():
    args = load_config([], None, [ONE_PROMPT, "args.is_run_isolated=true"]).args
    clip = plan_run(ENTRY_POINTS["sample_video"], args, ["a cat\non a\tsofa\x07", "a dog"]).isolated[0]
    assert clip == "isolated/0_a_cat_on_a_sofa_frames49.mp4"


def test_tiny_config_in_a_case_file_or_override_is_refused(tmp_path):
    """Only the --base files' model.tiny_config chooses what --tiny adds: set anywhere else it would do nothing."""
    case = write_yaml(tmp_path, "case.yaml", {"model": {"tiny_config": "other.yaml"}, "args": {"prompts": ["p"]}})
    for call in ((config.MODEL_CONFIG,), case), ((config.MODEL_CONFIG,), None, ["model.tiny_config=other.yaml", ONE_PROMPT]):
        source = case if call[1] else "command line"
        assert error_of(load_config, list(call[0]), *call[1:]) == (
            f"model.tiny_config in {source} has no effect: --tiny adds the tiny config the --base files name; to use "
            "another one, give it as the last --base file instead of --tiny")


@pytest.mark.parametrize("argv", [["--custom-config", "a.yaml", "--custom-config", "b.yaml"],
                                  ["--base", "a.yaml", "--base", "b.yaml"], ["--prompts", "a", "--prompts", "b"]])
def test_an_option_given_twice_is_refused(capsys, argv):
    with pytest.raises(SystemExit) as stop:
        parse_cli(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: {argv[-2]} given twice: the second would replace the first; give it once")


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
    assert error_of(prepare_output_dir, output_dir, []) == (
        f"args.output_dir '{output_dir}' is not writable: Not a directory")


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


def test_the_original_s_keys_are_read_here_or_have_no_effect():
    """The record of the original's keys: those read here are the schema's, with the original's defaults (the
    reference inference.yaml's values); the others are not in the schema and each says why it has no effect."""
    schema, original = config.argument_schema(), config.ORIGINAL_KEYS
    read = {key for key, record in original.items() if not record.no_effect}
    assert read <= set(schema) and not (set(original) - read) & set(schema)
    assert {key: original[key].default for key in REFERENCE_DEFAULTS} == REFERENCE_DEFAULTS
    without_effect = set(original) - read
    assert {"mode", "batch_size", "force_inference", "is_edit", "model_parallel_size", "deepspeed"} <= without_effect


def test_a_case_with_every_key_of_the_original_runs_with_one_note(tmp_path):
    """The original's whole key set with its defaults, as one case file, loads and passes every check of a
    multi-prompt run; one note names each key without effect once, with why."""
    keys = {key: record.default for key, record in config.ORIGINAL_KEYS.items()}
    case = write_yaml(tmp_path, "original.yaml", {"args": {**keys, "prompts": ["a cat on a sofa", "a dog on a sofa"],
                                                          "output_dir": str(tmp_path / "out")}})
    cfg = load_config([config.MODEL_CONFIG, config.TINY_MODEL_CONFIG], case)
    assert cfg.args.device == "auto"  # the original's -1
    entry = ENTRY_POINTS["sample_video"]
    check_run(entry, cfg, len(expand_prompts(cfg.args)))
    assert plan_run(entry, cfg.args, expand_prompts(cfg.args)).files == ["MultiPrompt_frames97.mp4"]
    note = config.original_keys_note(cfg.args)
    assert note.startswith("note: keys of the original DiTCtrl without effect here: ") and "\n" not in note
    without_effect = [key for key, record in config.ORIGINAL_KEYS.items() if record.no_effect]
    named = re.findall(r"(?:^|[:;(] ?|, )(\w+)(?=,| \()", note.split(": ", 1)[1])
    assert sorted(named) == sorted(without_effect)
    for key in ("mode", "is_edit", "deepspeed", "lr"):
        assert config.ORIGINAL_KEYS[key].no_effect in note


@pytest.mark.parametrize("key, value, message", [
    ("mode", "finetune", "args.mode = 'finetune' in {case}: SAT's training modes are not implemented: these scripts "
                         "only sample; set mode: inference, or delete the key"),
    ("is_edit", "yes", "args.is_edit = 'yes' in {case}: the original's is_edit is a bool; set is_edit: True or "
                       "is_edit: False, or delete the key"),
])
def test_an_original_key_asking_for_what_is_not_here_is_refused(tmp_path, key, value, message):
    case = write_yaml(tmp_path, "copied.yaml", {"args": {key: value}})
    assert error_of(load_config, [config.MODEL_CONFIG], case, [ONE_PROMPT]) == message.format(case=case)


@pytest.mark.parametrize("value, device", [(-1, "auto"), (0, "cuda:0"), ("cpu", "cpu")])
def test_device_takes_the_original_s_integers(value, device):
    assert load_config([], overrides=[ONE_PROMPT, f"args.device={value}"]).args.device == device


@pytest.mark.parametrize("script, prompts, overrides, refused", [
    ("sample_video", 3, ["args.is_edit=True"], "advance after every DiT forward, but sample_video.py runs 6 per "
                                               "sampler step here"),
    ("sample_video", 3, ["args.is_edit=False"], None),
    ("sample_video", 2, ["args.is_edit=True", "args.num_transition_blocks=0"], None),  # one pair: one forward a step
    ("sample_video", 2, ["args.is_edit=True", "args.adaln_mixin_names=[BaseAdaLNMixin]"], None),
    ("sample_video_edit", 2, ["args.is_edit=True"], None),
    ("sample_video_edit", 2, ["args.is_edit=False"], "advance after every 3 DiT forwards, but sample_video_edit.py "
                                                     "runs 1 per sampler step here"),
    ("sample_video_edit", 2, ["args.is_edit=False", "args.num_transition_blocks=0"], None),
    ("sample_video_edit", 2, ["args.is_edit=False", "args.adaln_mixin_names=[ReWeightAdaLNMixin]"], None),
    ("sample_video_visualize", 1, ["args.is_edit=False", "args.adaln_mixin_names=[VisualizeAdaLNMixin]"], None),
])
def test_is_edit_is_refused_only_where_the_original_did_not_count_the_true_steps(script, prompts, overrides, refused):
    """The original counted a KV-sharing step per forward (is_edit: True) or per sweep of its S - 1 window pairs
    (False); the key is accepted where that count is the sampler step, as every controller here is told."""
    cfg = load_config([config.MODEL_CONFIG, config.TINY_MODEL_CONFIG], None,
                      [f"args.prompts={['a cat on a sofa'] * prompts}", *overrides])
    if refused is None:
        check_run(ENTRY_POINTS[script], cfg, len(expand_prompts(cfg.args)))
        return
    with pytest.raises(ValueError) as error:
        check_run(ENTRY_POINTS[script], cfg, len(expand_prompts(cfg.args)))
    assert refused in str(error.value) and str(error.value).endswith(
        f"set is_edit: {'False' if script == 'sample_video' else 'True'} or delete it")


@pytest.mark.parametrize("script, prompts, overrides, count", [
    ("sample_video", 3, [], 2 * 23 * 5 * 6),  # rose: steps 2-24, layers 25-29, 7 windows: the 1,380 of the issue
    ("sample_video", 3, ["model.sampler_config.params.num_steps=4"], 2 * 2 * 5 * 6),  # steps 2, 3 of 4
    ("sample_video", 2, ["args.step_idx=[3]", "args.layer_idx=[0,29]"], 2 * 1 * 2 * 3),
    ("sample_video_edit", 2, [], 2 * 23 * 5 * 1),  # one pair
    ("sample_video", 3, ["args.save_masks=False"], 0),
    ("sample_video", 1, [], 0),  # one window: no pair, no mask
])
def test_the_mask_count_announced_is_source_and_target_per_controlled_step_layer_and_pair(script, prompts, overrides,
                                                                                        count):
    cfg = load_config([config.MODEL_CONFIG], None, [f"args.prompts={['a cat on a sofa'] * prompts}",
                                                    "args.adaln_mixin_names=[KVSharingMaskGuidedAdaLNMixin]", *overrides])
    entry, prompts = ENTRY_POINTS[script], expand_prompts(cfg.args)
    note = mask_files_note(cfg, plan_run(entry, cfg.args, prompts))
    if count == 0:
        assert note is None
        return
    assert note.startswith(f"note: KVSharingMaskGuidedAdaLNMixin writes {count} mask PNGs (") and note.endswith(
        f") to {cfg.args.output_dir}/attn_map; args.save_masks=False writes none")
