"""The diffusers folder layout: tiny models saved by diffusers' and transformers' own `save_pretrained`
load through our reader and give bitwise the latents of the same weights in the SAT layout."""
import json
import os
import re
import shutil

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from transformers import T5EncoderModel, T5Tokenizer

import sample_video
import sample_video_edit
from diffusers_transformer_reference import sat_to_diffusers
from diffusers_vae_reference import diffusers_vae_from_sat
from ditctrl.attention import build_controller
from ditctrl.checkpoints import MissingCheckpointError, read_transformer_state_dict, read_vae_state_dict
from ditctrl.config import MODEL_CONFIG, TINY_MODEL_CONFIG, load_config, parse_run_cli, validate_model
from ditctrl.diffusers_layout import TRANSFORMER_NAMES, VAE_NAMES, NameMap
from ditctrl.generation import encode_prompt_sets, sample_clip, sample_long
from ditctrl.multi_prompt import long_noise
from ditctrl.output_files import OutputRun
from ditctrl.pipeline import Pipeline
from ditctrl.weight_shapes import check_weight_shapes
from ditctrl.weights import check_weight_files, resolve_model, weight_paths
from ditctrl.segment_layout import segment_layout
from ditctrl.synthetic_checkpoint import write_synthetic_checkpoints

STEPS = 3
EDIT_CASE = os.path.join(os.path.dirname(os.path.dirname(MODEL_CONFIG)), "inference_case_configs", "edit",
                         "bus_truck.yaml")
PROMPTS = ["a red car on a street", "a blue car on a street"]


def check_weights(cfg) -> tuple:
    """The checks a run makes before model work: a diffusers folder's configs taken into the model and checked,
    every file there, then every tensor's name and shape; returns the run's config and the weight paths."""
    cfg, origins = resolve_model(cfg)
    validate_model(cfg, origins)
    paths = check_weight_files(cfg)
    check_weight_shapes(cfg, paths)
    return cfg, paths


def tiny_config(load, sat_folder):
    return load_config([MODEL_CONFIG, TINY_MODEL_CONFIG], overrides=[
        f"args.load={load}", f"model.first_stage_config.ckpt_path={sat_folder}/vae/3d-vae.pt",
        f"model.conditioner_config.params.model_dir={sat_folder}/t5-v1_1-xxl",
        f"model.sampler_config.params.num_steps={STEPS}", "args.start_step=1", "args.start_layer=20",
        "args.sampling_num_frames=5", "args.overlap_size=3",
    ], require_prompts=False)


def save_with_diffusers(cfg, folder):
    """The SAT-layout weights of `cfg`, saved by CogVideoXPipeline.save_pretrained in small shards."""
    paths = weight_paths(cfg)
    network = cfg.model.network_config.params
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=network.num_attention_heads, attention_head_dim=network.hidden_size // network.num_attention_heads,
        time_embed_dim=network.time_embed_dim, text_embed_dim=network.text_hidden_size, num_layers=network.num_layers,
        sample_width=network.latent_width, sample_height=network.latent_height, sample_frames=network.num_frames,
        max_text_seq_length=network.text_length)
    transformer.load_state_dict(sat_to_diffusers(read_transformer_state_dict(paths["transformer"]), network.hidden_size),
                                strict=True)
    vae_params = cfg.model.first_stage_config.params
    vae = diffusers_vae_from_sat(read_vae_state_dict(paths["vae"]), vae_params.ch, vae_params.ch_mult,
                                 vae_params.num_res_blocks)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                       timestep_spacing="trailing", clip_sample=False, snr_shift_scale=3.0)
    pipeline = CogVideoXPipeline(
        tokenizer=T5Tokenizer.from_pretrained(paths["t5"]), scheduler=scheduler, vae=vae, transformer=transformer,
        text_encoder=T5EncoderModel.from_pretrained(paths["t5"], dtype=torch.float16))
    pipeline.save_pretrained(folder, max_shard_size="2MB")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    (root / "sat").mkdir()  # the writer makes a folder outside sat/ only inside an existing one
    sat_cfg = tiny_config(root / "sat" / "transformer", root / "sat")
    write_synthetic_checkpoints(sat_cfg)
    save_with_diffusers(sat_cfg, root / "hf")
    return root, sat_cfg, check_weights(tiny_config(root / "hf", root / "sat"))[0]


def test_pipeline_save_pretrained_shards_the_parts(layouts):
    root = layouts[0]
    for part in ("transformer", "vae"):
        index = json.loads((root / "hf" / part / "diffusion_pytorch_model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
    assert (root / "hf" / "text_encoder" / "model.safetensors.index.json").is_file()


def test_folder_configs_give_the_model_shape_of_the_sat_config(layouts):
    """The model shape, VAE scale factor and SNR shift come from the folder's configs: a config that says
    otherwise is overwritten with the folder's values, which are those of the SAT config it was saved from."""
    _, sat_cfg, hf_cfg = layouts
    wrong = {"network_config": {"params": {"num_layers": 1, "hidden_size": 8}}, "scale_factor": 9.0,
             "first_stage_config": {"params": {"ch": 7}}, "sampler_config": {"params": {"shift_scale": 7.0}}}
    cfg, paths = check_weights(OmegaConf.merge(hf_cfg, {"model": wrong}))
    assert paths["layout"] == "diffusers"
    assert check_weights(sat_cfg)[1]["layout"] == "sat"
    for section in ("network_config", "first_stage_config", "sampler_config"):
        assert OmegaConf.to_container(cfg.model[section]) == OmegaConf.to_container(sat_cfg.model[section])
    assert cfg.model.scale_factor == sat_cfg.model.scale_factor


@pytest.mark.parametrize("names, levels", [(TRANSFORMER_NAMES, 0), (VAE_NAMES, 4)])
def test_name_map_round_trips(layouts, names, levels):
    """ours -> diffusers (the writer) -> ours (the reader) is the identity, and equals the test-only converter."""
    paths = weight_paths(layouts[1])
    ours = (read_transformer_state_dict(paths["transformer"]) if levels == 0 else read_vae_state_dict(paths["vae"]))
    name_map = NameMap(names, levels)
    theirs = name_map.to_diffusers(ours)
    if levels == 0:
        reference = sat_to_diffusers(ours, layouts[1].model.network_config.params.hidden_size)
        assert sorted(theirs) == sorted(reference) and all(torch.equal(theirs[k], reference[k]) for k in reference)
    for key, value in ours.items():
        assert torch.equal(name_map.from_diffusers(key, theirs.__getitem__), value), key


def encoded(cfg):
    """The pipeline with its DiT loaded and the prompts' T5 features (P, L, D)."""
    pipeline = Pipeline(cfg, "cpu")
    embeds, = encode_prompt_sets(pipeline, [PROMPTS])
    pipeline.load_dit()
    return pipeline, embeds


def multi_prompt_latent(cfg):
    args = cfg.args
    layout = segment_layout(len(PROMPTS), args.sampling_num_frames, args.overlap_size, args.num_transition_blocks,
                            args.longer_mid_segment)
    with torch.no_grad():
        pipeline, embeds = encoded(cfg)
        network = cfg.model.network_config.params
        noise = long_noise(layout, args.latent_channels, network.latent_height, network.latent_width, args.seed)
        torch.manual_seed(args.seed)
        return sample_long(pipeline, layout, embeds, build_controller("KVSharingAdaLNMixin", args, args.output_dir),
                           noise)


def edit_latent(cfg):
    args, network = cfg.args, cfg.model.network_config.params
    with torch.no_grad():
        pipeline, embeds = encoded(cfg)
        noise = torch.randn(1, args.sampling_num_frames, args.latent_channels, network.latent_height,
                            network.latent_width, generator=torch.Generator().manual_seed(args.seed))
        torch.manual_seed(args.seed)
        return sample_clip(pipeline, embeds, build_controller("KVSharingAdaLNMixin", args, args.output_dir), noise)


@pytest.mark.parametrize("run", [multi_prompt_latent, edit_latent])
def test_diffusers_folder_gives_bitwise_the_sat_latents(layouts, run):
    _, sat_cfg, hf_cfg = layouts
    check_weights(sat_cfg)
    want, got = run(sat_cfg), run(hf_cfg)
    assert want.abs().max() > 0.1
    assert torch.equal(got, want)


def broken_copy(layouts, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(layouts[0] / "hf", folder)
    return folder, tiny_config(folder, layouts[0] / "sat")


def edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("part, changes, message", [
    ("transformer/config.json", {"in_channels": 32}, "an image-to-video checkpoint"),
    ("transformer/config.json", {"use_learned_positional_embeddings": True}, "an image-to-video checkpoint"),
    ("transformer/config.json", {"patch_size_t": 2}, "a CogVideoX1.5 checkpoint"),
    ("model_index.json", {"_class_name": "CogVideoXImageToVideoPipeline"}, "an image-to-video pipeline"),
    ("scheduler/scheduler_config.json", {"prediction_type": "epsilon"}, "prediction_type = 'epsilon'"),
])
def test_unsupported_models_are_refused_naming_the_file(layouts, tmp_path, part, changes, message):
    folder, cfg = broken_copy(layouts, tmp_path)
    edit_json(folder / part, **changes)
    with pytest.raises(ValueError, match=re.escape(f"{folder / part}: ") + ".*" + re.escape(message)) as error:
        check_weights(cfg)
    assert "supported: CogVideoX-2b and CogVideoX-5b text-to-video" in str(error.value)


def write_json(path, content):
    path.write_text(json.dumps(content))


def _set(part, **changes):
    return lambda folder: (folder / part, edit_json(folder / part, **changes))


def _replace(part, content):
    return lambda folder: (folder / part, write_json(folder / part, content))


def _shard_index_of_numbers(folder):
    index = folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    content = json.loads(index.read_text())
    write_json(index, {**content, "weight_map": {name: 1 for name in content["weight_map"]}})
    return index, None


TRANSFORMER, VAE, SCHEDULER = "transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json"
FOLDER_FAULTS = {  # a damage to a copy of the folder -> the message after "<file>: "
    "num_layers a string": (_set(TRANSFORMER, num_layers="30"), "num_layers must be an int > 0, got '30' (str)"),
    "num_layers a float": (_set(TRANSFORMER, num_layers=30.0), "num_layers must be an int > 0, got 30.0 (float)"),
    "num_layers zero": (_set(TRANSFORMER, num_layers=0), "num_layers must be an int > 0, got 0 (int)"),
    "num_layers -1": (_set(TRANSFORMER, num_layers=-1), "num_layers must be an int > 0, got -1 (int)"),
    "num_layers null": (_set(TRANSFORMER, num_layers=None), "num_layers must be an int > 0, got None (NoneType)"),
    "num_layers a list": (_set(TRANSFORMER, num_layers=[30]), "num_layers must be an int > 0, got [30] (list)"),
    "text length a string": (_set(TRANSFORMER, max_text_seq_length="64"),
                             "max_text_seq_length must be an int > 0, got '64' (str)"),
    "head dim a float": (_set(TRANSFORMER, attention_head_dim=32.5),
                         "attention_head_dim must be an int > 0, got 32.5 (float)"),
    "rotary a string": (_set(TRANSFORMER, use_rotary_positional_embeddings="no"),
                        "use_rotary_positional_embeddings must be a bool, got 'no' (str)"),
    "grid not of whole patches": (_set(TRANSFORMER, sample_height=5),
                                  f"sample_height (5) must be a multiple of {{folder}}/{TRANSFORMER}: patch_size (2)"),
    "VAE widths a number": (_set(VAE, block_out_channels=32),
                            "block_out_channels must be a non-empty list of ints > 0, got 32 (int)"),
    "VAE widths with a string": (_set(VAE, block_out_channels=[32, "64"]),
                                 "block_out_channels must be a non-empty list of ints > 0, got [32, '64'] (list)"),
    "VAE levels zero": (_set(VAE, layers_per_block=0), "layers_per_block must be an int > 0, got 0 (int)"),
    "scaling factor a string": (_set(VAE, scaling_factor="big"),
                                "scaling_factor must be a number > 0, got 'big' (str)"),
    "SNR shift a string": (_set(SCHEDULER, snr_shift_scale="three"),
                           "snr_shift_scale must be a number > 0, got 'three' (str)"),
    "model index a list": (_replace("model_index.json", []), "holds a JSON list, not the object (mapping) of a "
                                                            "config or index file; download it again"),
    "transformer config a string": (_replace(TRANSFORMER, "x"), "holds a JSON str, not the object (mapping)"),
    "shard index of numbers": (_shard_index_of_numbers, "not a safetensors index with a 'weight_map' of tensor "
                                                        "names to shard file names"),
}


@pytest.mark.parametrize("fault", FOLDER_FAULTS)
def test_a_folder_value_of_the_wrong_type_or_range_is_refused_naming_its_file_and_field(layouts, tmp_path, fault):
    """The folder's values pass the config's own rules before any model work; the message blames the folder's file
    and field (a folder with num_layers -1 was reported as "args.start_layer contains 25; allowed: 0..-2")."""
    damage, message = FOLDER_FAULTS[fault]
    folder, cfg = broken_copy(layouts, tmp_path)
    path, _ = damage(folder)
    with pytest.raises(ValueError) as error:
        check_weights(cfg)
    assert str(error.value).startswith(f"{path}: {message.format(folder=folder)}"), str(error.value)


def test_a_folder_of_another_text_length_runs_with_its_t5_context(layouts, tmp_path):
    """The 2B config (text length and T5 context 226) on a folder whose transformer has 64 text tokens: the folder's
    shape is taken before any check, T5 is cut to its 64 tokens, and the video is the one of the tiny config that
    says 64 itself (it ended in "internal error (RuntimeError: size 304 vs 142)")."""
    common = ["--custom-config", EDIT_CASE, "--", f"args.load={layouts[0] / 'hf'}",
              "model.sampler_config.params.num_steps=2", "args.start_step=1"]
    with OutputRun():
        sample_video_edit.main(["--base", MODEL_CONFIG, *common, "args.device=cpu", "args.fp16=False",
                                f"args.output_dir={tmp_path / 'two_b'}"])
    with OutputRun():
        sample_video_edit.main(["--base", MODEL_CONFIG, TINY_MODEL_CONFIG, *common, f"args.output_dir={tmp_path / 'tiny'}"])
    resolved = OmegaConf.load(tmp_path / "two_b" / "params.yaml").model
    assert resolved.conditioner_config.params.max_length == resolved.network_config.params.text_length == 64
    video = "editing_frames49.mp4"
    assert (tmp_path / "two_b" / video).read_bytes() == (tmp_path / "tiny" / video).read_bytes()


@pytest.mark.parametrize("setting, message", [
    ("model.network_config.params.num_layers=20", "model.network_config.params.num_layers = 20 (case file or command "
     "line) has no effect: the diffusers folder sets it ({folder}/transformer/config.json: num_layers = 30); remove "
     "the setting"),
    ("model.conditioner_config.params.max_length=226", "model.conditioner_config.params.max_length = 226 (case file or "
     "command line) has no effect: the diffusers folder sets it ({folder}/transformer/config.json: "
     "max_text_seq_length = 64); remove the setting"),
    ("model.first_stage_config.ckpt_path=vae/3d-vae.pt", "model.first_stage_config.ckpt_path = vae/3d-vae.pt (case "
     "file or command line) has no effect: the diffusers folder {folder} brings its own VAE and T5; remove the "
     "setting"),
])
def test_a_model_setting_the_folder_replaces_is_refused(layouts, tmp_path, capsys, setting, message):
    folder = layouts[0] / "hf"
    with pytest.raises(SystemExit) as stop:
        sample_video.main(["--base", MODEL_CONFIG, "--prompts", "a cat", "--", f"args.load={folder}", setting,
                           f"args.output_dir={tmp_path / 'out'}"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: {message.format(folder=folder)}\n"
    assert not (tmp_path / "out").exists()


def test_a_model_setting_equal_to_the_folder_s_is_accepted(layouts):
    cfg, tiny, requested = parse_run_cli(["--base", MODEL_CONFIG, "--prompts", "a cat", "--",
                                          f"args.load={layouts[0] / 'hf'}", "model.network_config.params.num_layers=30"])
    assert resolve_model(cfg, requested)[0].model.network_config.params.num_layers == 30


def test_missing_shard_is_named(layouts, tmp_path):
    folder, cfg = broken_copy(layouts, tmp_path)
    shard = sorted((folder / "transformer").glob("*-00002-of-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(MissingCheckpointError, match=re.escape(str(shard))):
        check_weights(cfg)


def test_shard_with_a_wrong_shape_is_named(layouts, tmp_path):
    folder, cfg = broken_copy(layouts, tmp_path)
    shard = sorted((folder / "vae").glob("*.safetensors"))[0]
    tensors = load_file(shard)
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(3, 1)
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=re.escape(f"VAE checkpoint does not fit the model: 1 shape mismatches, "
                                                   f"file vs model ({name} (3, 1) vs ") + r".*" + re.escape(str(shard))):
        check_weights(cfg)


def test_folder_of_neither_layout_is_refused(layouts, tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "notes.txt").write_text("")
    cfg = tiny_config(tmp_path / "weights", layouts[0] / "sat")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'weights'} is neither a diffusers folder")):
        check_weights(cfg)


def test_writer_writes_a_5b_diffusers_folder_that_diffusers_and_the_sat_layout_agree_on(tmp_path):
    """Our writer's diffusers folder: diffusers loads it as the same weights; our two layouts load the same DiT."""
    base = [os.path.join(os.path.dirname(MODEL_CONFIG), name) for name in ("cogvideox_5b.yaml", "cogvideox_5b_tiny.yaml")]
    overrides = [f"model.first_stage_config.ckpt_path={tmp_path}/sat/vae/3d-vae.pt",
                 f"model.conditioner_config.params.model_dir={tmp_path}/sat/t5"]
    hf_cfg = load_config(base, overrides=[f"args.load={tmp_path}/hf", *overrides], require_prompts=False)
    sat_cfg = load_config(base, overrides=[f"args.load={tmp_path}/sat/transformer", *overrides], require_prompts=False)
    (tmp_path / "sat").mkdir()
    write_synthetic_checkpoints(hf_cfg, layout="diffusers", max_shard_bytes=200_000)
    write_synthetic_checkpoints(sat_cfg)
    declared = OmegaConf.to_container(hf_cfg.model)

    checked, paths = check_weights(hf_cfg)
    assert paths["layout"] == "diffusers"
    assert OmegaConf.to_container(checked.model) == declared  # the folder's configs say what the config says
    assert len(list((tmp_path / "hf" / "transformer").glob("*.safetensors"))) > 1
    sat = read_transformer_state_dict(tmp_path / "sat" / "transformer")
    transformer = CogVideoXTransformer3DModel.from_pretrained(tmp_path / "hf" / "transformer")
    assert transformer.config.use_rotary_positional_embeddings and transformer.config.num_layers == 42
    reference = sat_to_diffusers(sat, hf_cfg.model.network_config.params.hidden_size)
    assert all(torch.equal(value, reference[key]) for key, value in transformer.state_dict().items())
    vae = AutoencoderKLCogVideoX.from_pretrained(tmp_path / "hf" / "vae")
    assert vae.config.scaling_factor == 0.7
    vae_params = hf_cfg.model.first_stage_config.params
    want = diffusers_vae_from_sat(read_vae_state_dict(tmp_path / "sat" / "vae" / "3d-vae.pt"), vae_params.ch,
                                  vae_params.ch_mult, vae_params.num_res_blocks).state_dict()
    assert all(torch.equal(value, want[key]) for key, value in vae.state_dict().items())

    two_b = load_config([MODEL_CONFIG, TINY_MODEL_CONFIG], overrides=[f"args.load={tmp_path}/hf"],
                        require_prompts=False)
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path}/hf holds a CogVideoX-5B-type model (rotary position embedding: True) but the run is "
            "configured for CogVideoX-2b; run with --model 5b")):
        resolve_model(two_b)  # else 5B would run with 2B's fp16 and controlled layers 25-29


def test_a_2b_folder_under_the_5b_config_is_refused(layouts):
    five_b = load_config([os.path.join(os.path.dirname(MODEL_CONFIG), name)
                          for name in ("cogvideox_5b.yaml", "cogvideox_5b_tiny.yaml")],
                         overrides=[f"args.load={layouts[0]}/hf"], require_prompts=False)
    with pytest.raises(ValueError, match=re.escape(
            f"{layouts[0]}/hf holds a CogVideoX-2B-type model (rotary position embedding: False) but the run is "
            "configured for CogVideoX-5b; run with --model 2b")):
        resolve_model(five_b)


def test_entry_script_refuses_an_image_to_video_folder_before_model_work(layouts, tmp_path, capsys):
    folder, _ = broken_copy(layouts, tmp_path)
    edit_json(folder / "transformer" / "config.json", in_channels=32)
    with pytest.raises(SystemExit) as stop:
        sample_video.main(["--base", MODEL_CONFIG, "--prompts", "a cat", "--", f"args.load={folder}",
                           f"args.output_dir={tmp_path / 'out'}"])
    assert stop.value.code == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {folder / 'transformer' / 'config.json'}: "
                                                     "an image-to-video checkpoint")
    assert not (tmp_path / "out").exists()
