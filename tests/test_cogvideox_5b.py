"""CogVideoX-5B: config selection, FLOPs, and a tiny 5B-shaped mask-guided run through an entry script."""
import os
import subprocess

import imageio.v3 as iio
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import benchmark
import sample_video
from benchmarking.flops import DiTSize, forward_flops
from ditctrl.attention.kernels import set_backend
from ditctrl.config import CONFIG_DIR, INFERENCE_CONFIG, MODEL_CONFIG, load_config, tiny_config_for
from ditctrl.denoiser import table_index
from ditctrl.entry_points import layer_range_note
from ditctrl.pipeline import Pipeline
from repo_paths import REPO
from tiny_models import SMALL_DIT, small_dit

MODEL_5B = os.path.join(CONFIG_DIR, "cogvideox_5b.yaml")


def test_5b_config_keeps_its_defaults_after_inference_yaml():
    """The run scripts pass `--base <model> configs/inference.yaml`; the model's own args defaults still hold."""
    cfg = load_config([MODEL_5B, INFERENCE_CONFIG], require_prompts=False)
    network = cfg.model.network_config.params
    assert (network.num_layers, network.hidden_size, network.num_attention_heads) == (42, 3072, 48)
    assert network.rotary_position_embedding
    assert (cfg.model.scale_factor, cfg.model.sampler_config.params.shift_scale) == (0.7, 1.0)
    assert (cfg.args.bf16, cfg.args.fp16, cfg.args.load) == (True, False, "CogVideoX-5b")
    assert (cfg.args.start_layer, cfg.args.end_layer) == (35, 42)
    assert load_config([MODEL_5B, INFERENCE_CONFIG], overrides=["args.start_layer=30"],
                       require_prompts=False).args.start_layer == 30


@pytest.mark.parametrize("model", [MODEL_CONFIG, MODEL_5B], ids=["2b", "5b"])
def test_denoiser_snaps_each_step_to_its_own_timestep(model):
    """The original's denoiser table has the sampler's SNR shift (2B 3.0, 5B 1.0): every step's alpha snaps to the
    table entry of its own timestep (±1 from the sampler's zero-SNR rescale over 50 steps). With 2B's table, 49 of
    5B's 50 steps snap 10 to 50 timesteps away."""
    pipeline = Pipeline(load_config([model, INFERENCE_CONFIG], require_prompts=False), "cpu")
    table = pipeline.guided().table
    schedule = pipeline.schedule
    assert [abs(int(table_index(alpha, table)) - t) <= 1 for alpha, t in zip(schedule.alphas, schedule.timesteps)] \
        == [True] * schedule.num_steps


@pytest.mark.parametrize("model, layers, note", [
    (MODEL_5B, ["args.start_layer=0", "args.end_layer=30"],  # the original's reweight cases
     "note: args.start_layer 0, args.end_layer 30 control layers 0-29 of CogVideoX-5b's 42, as written (the "
     "original's cases count CogVideoX-2B's 30); the same part of this model's depth is args.start_layer=0 "
     "args.end_layer=42"),
    (MODEL_5B, ["args.start_layer=25", "args.end_layer=30"],  # the original's inference.yaml
     "note: args.start_layer 25, args.end_layer 30 control layers 25-29 of CogVideoX-5b's 42, as written (the "
     "original's cases count CogVideoX-2B's 30); the same part of this model's depth is args.start_layer=35 "
     "args.end_layer=42"),
    (MODEL_5B, ["args.layer_idx=[10,20]"],
     "note: args.layer_idx [10, 20] control layers 10, 20 of CogVideoX-5b's 42, as written (the original's cases "
     "count CogVideoX-2B's 30); the same part of this model's depth is args.layer_idx=[14, 28]"),
    (MODEL_5B, [], None),  # 5B's own default, layers 35-41
    (MODEL_5B, ["args.start_layer=20", "args.end_layer=42"], None),  # reaches past 2B's depth: written for 5B
    (MODEL_5B, ["args.start_layer=0", "args.end_layer=30", "args.adaln_mixin_names=[BaseAdaLNMixin]"], None),
    (MODEL_CONFIG, ["args.start_layer=0", "args.end_layer=30"], None),
])
def test_a_layer_range_written_for_2b_is_announced_on_another_depth(model, layers, note):
    """Kept as written (not scaled): the note names the layers controlled of the model's depth and the keys that
    control the same part of it."""
    cfg = load_config([model, INFERENCE_CONFIG], overrides=layers, require_prompts=False)
    assert layer_range_note(cfg) == note


def test_tiny_follows_the_model():
    assert tiny_config_for([MODEL_5B, INFERENCE_CONFIG]) == os.path.join(CONFIG_DIR, "cogvideox_5b_tiny.yaml")
    assert tiny_config_for([os.path.join(CONFIG_DIR, "cogvideox_2b.yaml")]) == os.path.join(CONFIG_DIR,
                                                                                              "cogvideox_tiny.yaml")
    tiny = load_config([MODEL_5B, INFERENCE_CONFIG, tiny_config_for([MODEL_5B])], require_prompts=False)
    assert tiny.model.network_config.params.num_layers == 42 and tiny.model.network_config.params.hidden_size == 64
    assert (tiny.args.fp16, tiny.args.bf16) == (False, False)


def test_tiny_5b_mask_guided_multi_prompt_run(tmp_path, in_repo):
    """Mask-guided KV-sharing (maps, masks and shared keys) at every step, the last layer included."""
    sample_video.main(["--base", MODEL_5B, INFERENCE_CONFIG, "--custom-config",
                       "inference_case_configs/multi_prompts/horse_beach_snow.yaml", "--tiny",
                       "model.sampler_config.params.num_steps=2", "args.start_step=0", "args.num_transition_blocks=0",
                       f"args.output_dir={tmp_path}"])
    assert iio.imread(tmp_path / "MultiPrompt_frames65.mp4").shape == (65, 32, 48, 3)
    assert sorted(p.name for p in (tmp_path / "attn_map" / "segment0").glob("mask_s_*")) == [
        f"mask_s_step{step}_layer{layer}_all_frames.png" for step in (0, 1) for layer in range(35, 42)]


def test_5b_forward_flops_equal_the_hand_count_and_torch_flop_counter():
    size = DiTSize.from_network_params(load_config([MODEL_5B], require_prompts=False).model.network_config.params)
    n, d = 226 + 13 * 30 * 45, 3072
    by_hand = 42 * (2 * n * 12 * d * d + 4 * n * n * d)  # per layer: QKV, output, MLP; QKᵀ and PV
    assert forward_flops(size, 13) == pytest.approx(by_hand, rel=1e-4)  # + embeddings, adaLN, final layer
    assert forward_flops(size, 13) / 1e12 == pytest.approx(332.2, abs=0.05)
    assert benchmark.full_size_flops()[0]["5b"]["tflop_per_forward"] == pytest.approx(4 * 332.2, abs=0.2)

    small = {**SMALL_DIT, "rotary_position_embedding": True}
    model = small_dit(**small)
    latents = torch.randn(2, 3, 16, small["latent_height"], small["latent_width"])
    context = torch.randn(2, small["text_length"], small["text_hidden_size"])
    set_backend("math")  # the counter sees the math kernel's matmuls
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(latents, torch.tensor([999.0, 500.0]), context)
    finally:
        set_backend("auto")
    assert counter.get_total_flops() == forward_flops(DiTSize.from_network_params(small), 3, 2)


def test_run_script_refuses_an_unknown_model():
    result = subprocess.run(["bash", "run_multi_prompt.sh", "--model", "7b", "--tiny"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown model '7b' (--model); choices: 2b, 5b"
