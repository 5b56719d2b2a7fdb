"""The GPU path against the fp32 CPU path on the same weights: DiT, kernels, controllers, VAE, one script run.

Run with `python -m pytest -m cuda tests/test_cuda.py`. Without a CUDA device every test is skipped
with the reason shown by `-rs`; `DITCTRL_TEST_DEVICE=cpu` runs the same tests on the CPU in bfloat16
(a dry run of this file). Numbers worth reading (errors, flipped mask pixels, backends) are attached
to each test with `record_property`, i.e. written to the `--junitxml` report.

Tolerances are multiples of the run dtype's machine epsilon (fp16 9.8e-4, bf16 7.8e-3): the inputs
and weights are rounded to it and every layer adds rounding of the same order, while the accumulations
(matmuls, softmax sums, norms) run in fp32 on every backend. Values are O(1) by construction.
"""
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from ditctrl.attention import AttentionController, AttentionVisualizer, ControlSchedule, KVSharing, MaskGuidedKVSharing, TokenReweighting
from ditctrl.attention.kernels import BACKENDS, attention, attention_with_lse, backend_runs, probabilities, set_backend
from ditctrl.pipeline import build_transformer
from ditctrl.synthetic_checkpoint import randomize_module, write_t5_folder
from ditctrl.text_encoder import T5TextEncoder
from ditctrl.vae import CogVideoXVAE
from repo_paths import REPO
from tiny_models import small_dit

DEVICE = os.environ.get("DITCTRL_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE.startswith("cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(),
                       reason="no CUDA device (DITCTRL_TEST_DEVICE=cpu runs these tests on the CPU in bf16)"),
]
DTYPES = [torch.float16, torch.bfloat16] if ON_CUDA else [torch.bfloat16]
DTYPE_IDS = [str(d).removeprefix("torch.") for d in DTYPES]
# head dim 64 as in CogVideoX-2B, so every fused kernel takes the real model's path
DIT = dict(num_layers=4, hidden_size=128, num_attention_heads=2, time_embed_dim=32, text_hidden_size=24,
           text_length=7, latent_height=8, latent_width=12, num_frames=17)
GRID = (3, 4, 6)  # latent frames, token rows, token columns of the test batches


def eps(dtype) -> float:
    return torch.finfo(dtype).eps


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """‖result − reference‖ / ‖reference‖ over the whole tensor, in fp32 on the CPU."""
    result, reference = result.float().cpu(), reference.float().cpu()
    return ((result - reference).norm() / reference.norm()).item()


@pytest.fixture(autouse=True)
def auto_backend():
    """Every test starts and ends with torch's own backend choice."""
    set_backend("auto")
    yield
    set_backend("auto")


@pytest.fixture(scope="module")
def reference_dit():
    return small_dit(seed=5, **DIT)


def device_dit(reference, dtype):
    """The reference's weights in a model built directly on the device in `dtype`, as the pipeline builds it."""
    return build_transformer(DIT, reference.state_dict(), DEVICE, dtype)


def pair_batch(seed: int):
    """x (4, T, C, H, W) in (u_s, u_t, c_s, c_t) order, timesteps (4,), context (4, L, D): fp32 on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    frames, rows, cols = GRID
    xs, xt = (torch.randn(1, frames, 16, 2 * rows, 2 * cols, generator=gen) for _ in range(2))
    c_s, c_t = (torch.randn(1, DIT["text_length"], DIT["text_hidden_size"], generator=gen) for _ in range(2))
    u = torch.zeros_like(c_s)
    return torch.cat([xs, xt, xs, xt]), torch.full((4,), 801.0), torch.cat([u, u, c_s, c_t])


def run(model, controller, batch, step, device=DEVICE):
    model.set_controller(controller)
    with torch.no_grad():
        return model(*(t.to(device) for t in batch), step=step, pair=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_dit_in_low_precision_matches_fp32_cpu(reference_dit, dtype, record_property):
    """Tolerance 8·eps relative (L2): 4 layers of rounded weights and activations on O(1) values."""
    model = device_dit(reference_dit, dtype)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {(torch.device(DEVICE).type, dtype)}
    batch = pair_batch(0)
    error = relative_error(run(model, AttentionController(), batch, 0),
                           run(reference_dit, AttentionController(), batch, 0, "cpu"))
    record_property("relative_error", error)
    assert error <= 8 * eps(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_t5_loads_onto_the_device_and_matches_fp32_cpu(tmp_path, dtype, record_property):
    """T5 goes to the device as it is read, in `dtype`; in fp16 the feed-forward output projections `wo` stay fp32
    (transformers' rule for T5 v1.1: 2 GB more for t5-v1_1-xxl). Tolerance 8·eps relative (L2), as the DiT: 2 blocks
    of rounded weights and activations."""
    write_t5_folder(tmp_path, d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, seed=4)
    encoder = T5TextEncoder(tmp_path, device=DEVICE, dtype=dtype)
    placed = {name: (p.device.type, p.dtype) for name, p in encoder.model.named_parameters()}
    kept_fp32 = dtype == torch.float16
    expected = {name: (torch.device(DEVICE).type, torch.float32 if kept_fp32 and ".wo." in name else dtype)
                for name in placed}
    assert placed == expected
    prompt = "a red rose in a garden, the camera pulls back"
    error = relative_error(encoder.encode(prompt), T5TextEncoder(tmp_path, dtype=torch.float32).encode(prompt))
    record_property("relative_error", error)
    assert error <= 8 * eps(dtype)


def qkv_inputs(layout: str, dtype, seed: int = 0):
    """q, k, v (2, heads 3, N 300, d 64) on the device: contiguous, or strided as the controllers send them
    (q, k, v views of one fused projection, then every second batch row as q[SOURCES] takes)."""
    gen = torch.Generator().manual_seed(seed)
    if layout == "contiguous":
        return tuple(torch.randn(2, 3, 300, 64, generator=gen).to(DEVICE, dtype) for _ in range(3))
    fused = torch.randn(4, 300, 3, 3, 64, generator=gen).to(DEVICE, dtype)  # (B, N, qkv, heads, d) as in the DiT
    q, k, v = fused.permute(2, 0, 3, 1, 4)  # each (4, heads, N, d), not contiguous
    return q[::2], k[::2], v[::2]


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("backend", [name for name in BACKENDS if name != "auto"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_attention_kernels_on_every_backend(backend, layout, dtype, record_property):
    """Output (4·eps absolute), log-sum-exp (16·eps) and selected probabilities (16·eps relative) of the
    pinned backend equal the explicit fp32 softmax of the same rounded inputs."""
    if not backend_runs(backend, DEVICE, dtype):
        pytest.skip(f"torch offers no {backend} SDPA kernel for {dtype} on this device")
    q, k, v = qkv_inputs(layout, dtype)
    scores = q.float() @ k.float().transpose(-1, -2) / 8.0  # (B, heads, N, N), d = 64
    reference_lse = torch.logsumexp(scores, dim=-1)
    reference_probs = torch.softmax(scores, dim=-1)
    reference_out = reference_probs @ v.float()
    set_backend(backend)
    out, lse = attention_with_lse(q, k, v)
    plain = attention(q, k, v)
    probs = probabilities(q, k, lse, slice(7, None), [0, 3, 5])
    errors = {"out": (out.float() - reference_out).abs().max().item(),
              "plain": (plain.float() - reference_out).abs().max().item(),
              "lse": (lse - reference_lse).abs().max().item(),
              "probs": ((probs - reference_probs[:, :, 7:, [0, 3, 5]]).abs()
                        / reference_probs[:, :, 7:, [0, 3, 5]]).max().item()}
    for name, error in errors.items():
        record_property(f"max_error_{name}", error)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    assert errors["out"] <= 4 * eps(dtype) and errors["plain"] <= 4 * eps(dtype)
    assert errors["lse"] <= 16 * eps(dtype) and errors["probs"] <= 16 * eps(dtype)


def test_a_pinned_backend_that_cannot_run_says_which_call():
    if not ON_CUDA:
        pytest.skip("the CPU offers no cuDNN kernel at all; this checks a GPU kernel refusing fp32")
    q = torch.randn(1, 2, 40, 64, device=DEVICE)  # fp32: Flash takes only fp16/bf16
    set_backend("flash")
    with pytest.raises(RuntimeError, match="attention_with_lse: the 'flash' attention backend cannot run"):
        attention_with_lse(q, q, q)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kv_sharing_on_device_matches_fp32_cpu(reference_dit, dtype, record_property):
    schedule = ControlSchedule(frozenset({0}), frozenset(range(DIT["num_layers"])))
    batch = pair_batch(1)
    error = relative_error(run(device_dit(reference_dit, dtype), KVSharing(schedule), batch, 0),
                           run(reference_dit, KVSharing(schedule), batch, 0, "cpu"))
    record_property("relative_error", error)
    assert error <= 8 * eps(dtype)


class MaskRecorder:
    """Wraps a mask-guided controller's `_masks`: records the continuous masks it makes, or replays given ones."""

    def __init__(self, controller: MaskGuidedKVSharing, replay=None):
        self.made, self.replay, self.compute = [], list(replay or []), controller._masks
        controller._masks = self

    def __call__(self, layer):
        masks = [m.clone() for m in self.replay.pop(0)] if self.replay else self.compute(layer)
        self.made.append([m.float().cpu() for m in masks])
        return masks


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_mask_guided_on_device_matches_fp32_cpu(reference_dit, dtype, record_property):
    """Continuous masks agree to 32·eps; pixels within that of `thres` may flip (counted, at most 3 %);
    with the device's masks imposed the fp32 CPU run gives the device output to 8·eps."""
    schedule = ControlSchedule(frozenset({0}), frozenset({1, 3}))
    batch = pair_batch(2)

    def controller():
        return MaskGuidedKVSharing(schedule, thres=0.3, ref_tokens=[0, 1], cur_tokens=[0, 1])

    on_device, free_reference = controller(), controller()
    device_masks, reference_masks = MaskRecorder(on_device), MaskRecorder(free_reference)
    out = run(device_dit(reference_dit, dtype), on_device, batch, 0)
    run(reference_dit, free_reference, batch, 0, "cpu")
    imposed = controller()
    MaskRecorder(imposed, replay=device_masks.made)
    reference_out = run(reference_dit, imposed, batch, 0, "cpu")

    pairs = [(d, r) for layer_d, layer_r in zip(device_masks.made, reference_masks.made) for d, r in zip(layer_d, layer_r)]
    assert len(pairs) == 4  # 2 controlled layers × (source, target)
    flipped = sum(((d >= 0.3) != (r >= 0.3)).sum().item() for d, r in pairs)
    pixels = sum(r.numel() for _, r in pairs)
    mask_error = max((d - r).abs().max().item() for d, r in pairs)
    error = relative_error(out, reference_out)
    record_property("flipped_mask_pixels", f"{flipped} of {pixels}")
    record_property("max_mask_error", mask_error)
    record_property("relative_error_with_equal_masks", error)
    assert mask_error <= 32 * eps(dtype)
    assert flipped <= 0.03 * pixels
    assert error <= 8 * eps(dtype)


@pytest.mark.parametrize("step", [0, 1], ids=["source_kv", "own_kv"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_reweight_on_device_matches_fp32_cpu(reference_dit, dtype, step, record_property):
    schedule = ControlSchedule(frozenset({0, 1}), frozenset({1, 2}))

    def controller():
        return TokenReweighting(schedule, tokens=[1, 2], scale=0.5, kv_switch_step=1)

    batch = pair_batch(3)
    error = relative_error(run(device_dit(reference_dit, dtype), controller(), batch, step),
                           run(reference_dit, controller(), batch, step, "cpu"))
    record_property("relative_error", error)
    assert error <= 8 * eps(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_visualisation_on_device_matches_fp32_cpu(reference_dit, dtype, tmp_path, record_property):
    """Every saved map (min-max normalised to [0, 1]) agrees to 32·eps absolute."""
    gen = torch.Generator().manual_seed(4)
    frames, rows, cols = GRID
    x = torch.randn(1, frames, 16, 2 * rows, 2 * cols, generator=gen).expand(2, -1, -1, -1, -1)
    context = torch.cat([torch.zeros(1, 7, 24), torch.randn(1, 7, 24, generator=gen)])
    batch = (x, torch.full((2,), 501.0), context)
    folders = {"device": tmp_path / "device", "cpu": tmp_path / "cpu"}
    visualizers = {where: AttentionVisualizer([0], [1, 3], [0, 2], str(folder), dpi=20) for where, folder in folders.items()}
    run(device_dit(reference_dit, dtype), visualizers["device"], batch, 0)
    run(reference_dit, visualizers["cpu"], batch, 0, "cpu")
    for visualizer in visualizers.values():
        visualizer.end_step()  # the maps collected on the device are written after the step
    arrays = [os.path.relpath(p, folders["device"]) for p in visualizers["device"].figures_written if p.endswith(".npy")]
    assert len(arrays) == 6  # text, spatial and temporal maps at layers 1 and 3
    error = max(np.abs(np.load(folders["device"] / a) - np.load(folders["cpu"] / a)).max() for a in arrays)
    record_property("max_map_error", float(error))
    assert error <= 32 * eps(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_chunked_vae_decode_on_device_matches_fp32_cpu(dtype, record_property):
    """Tolerance 16·eps relative: 12 convolution levels of rounded weights and activations."""
    reference = CogVideoXVAE.tiny().eval()
    randomize_module(reference, seed=6)
    model = CogVideoXVAE.tiny().to(DEVICE, dtype).eval()
    model.load_state_dict(reference.state_dict())
    z = torch.randn(1, 16, 7, 4, 6, generator=torch.Generator().manual_seed(7))
    error = relative_error(model.decode(z.to(DEVICE), chunked=True), reference.decode(z, chunked=True))
    record_property("relative_error", error)
    assert error <= 16 * eps(dtype)
    if ON_CUDA:  # chunking bounds the memory: 4 times the frames, the same peak
        peaks = []
        for frames in (5, 17):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            video = model.decode(torch.randn(1, 16, frames, 4, 6, device=DEVICE), chunked=True)
            peaks.append(torch.cuda.max_memory_allocated() - base - video.numel() * video.element_size())
            del video
        record_property("decode_peak_bytes_5_and_17_frames", peaks)
        assert peaks[1] <= 1.25 * peaks[0]


def test_tiny_multi_prompt_run_on_device_writes_its_mp4(tmp_path):
    """sample_video.py end to end (rose, 3 prompts, 4 sampler steps) on the device in its low precision."""
    dtype_args = ["args.fp16=True"] if ON_CUDA else ["args.fp16=False", "args.bf16=True"]
    command = [sys.executable, "sat/sample_video.py", "--base", "configs/cogvideox_2b.yaml", "configs/inference.yaml",
               "--custom-config", "inference_case_configs/multi_prompts/rose.yaml", "--tiny",
               f"args.device={DEVICE}", *dtype_args, f"args.output_dir={tmp_path}",
               "model.sampler_config.params.num_steps=4"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / "MultiPrompt_frames145.mp4"
    assert path.is_file() and path.stat().st_size > 0
    frames = iio.imread(path)
    assert frames.shape == (145, 32, 48, 3)
