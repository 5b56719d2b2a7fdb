"""CogVideoX VAE: SAT checkpoint layout, and equality to diffusers' AutoencoderKLCogVideoX (docs/model.md, "VAE")."""
import copy

import pytest
import torch

from diffusers_vae_reference import diffusers_vae_from_sat
from ditctrl import vae as vae_module
from ditctrl.vae import CausalConv3d, CogVideoXVAE, encode_chunks

TINY = dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1)
LATENT_HW = (4, 6)
TOL = 1e-4


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter: norm scales near 1, biases small, weights ~ N(0, 1/fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)


@pytest.fixture(scope="module")
def ours() -> CogVideoXVAE:
    vae = CogVideoXVAE(**TINY).eval()
    randomize_(vae, seed=0)
    return vae


@pytest.fixture(scope="module")
def reference(ours):
    return diffusers_vae_from_sat(ours.state_dict(), **TINY)


def latent(frames: int, seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 16, frames, *LATENT_HW, generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.float() - b.float()).abs().max().item()


def test_full_size_state_dict_is_sat_layout():
    with torch.device("meta"):
        sd = CogVideoXVAE().state_dict()
    for prefix, tensors, values in (("encoder.", 128, 92_215_456), ("decoder.", 308, 123_368_451)):
        part = {k: v for k, v in sd.items() if k.startswith(prefix)}
        assert (len(part), sum(v.numel() for v in part.values())) == (tensors, values)
    assert len(sd) == 128 + 308
    expected_shapes = {
        "encoder.conv_in.conv.weight": (128, 3, 3, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1, 1),
        "encoder.down.3.block.2.conv2.conv.weight": (512, 512, 3, 3, 3),
        "encoder.down.2.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.mid.block_2.norm1.weight": (512,),
        "encoder.conv_out.conv.weight": (32, 512, 3, 3, 3),
        "decoder.conv_in.conv.weight": (512, 16, 3, 3, 3),
        "decoder.mid.block_1.norm2.conv_b.conv.bias": (512,),
        "decoder.up.3.block.3.norm1.norm_layer.weight": (512,),
        "decoder.up.2.block.0.nin_shortcut.weight": (256, 512, 1, 1, 1),
        "decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1, 1),
        "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.1.upsample.conv.weight": (256, 256, 3, 3),
        "decoder.norm_out.conv_y.conv.weight": (128, 16, 1, 1, 1),
        "decoder.conv_out.conv.weight": (3, 128, 3, 3, 3),
    }
    assert {k: tuple(sd[k].shape) for k in expected_shapes} == expected_shapes
    assert not any("quant" in k or "up.0.upsample" in k or "down.3.downsample" in k for k in sd)


@pytest.mark.parametrize("frames", [1, 5, 7])
def test_chunked_decode_matches_diffusers_default(ours, reference, frames):
    z = latent(frames, seed=frames)
    expected = reference.decode(z).sample
    got = ours.decode(z)
    assert got.shape == (1, 3, 4 * (frames - 1) + 1, 32, 48)
    assert max_diff(got, expected) <= TOL


@pytest.mark.parametrize("frames", [5, 7])
def test_one_shot_decode_matches_diffusers_single_batch(ours, reference, frames, monkeypatch):
    z = latent(frames, seed=10 + frames)
    monkeypatch.setattr(reference, "num_latent_frames_batch_size", frames)
    assert max_diff(ours.decode(z, chunked=False), reference.decode(z).sample) <= TOL


def test_chunked_decode_differs_from_one_shot(ours):
    # GroupNorm statistics are taken per chunk (docs/model.md, "Chunked decode"), so chunking is not a pure reordering.
    z = latent(5, seed=20)
    assert max_diff(ours.decode(z), ours.decode(z, chunked=False)) > 1e-2


def test_previous_video_does_not_leak_into_next(ours):
    fresh = copy.deepcopy(ours)
    video_b = latent(5, seed=31)
    ours.decode(latent(7, seed=30))
    assert torch.equal(ours.decode(video_b), fresh.decode(video_b))


def test_context_carries_two_frames_per_causal_conv_between_chunks(ours):
    convs = [m for m in ours.decoder.modules() if isinstance(m, CausalConv3d)]
    held = []

    def record(module, args, output):
        held.append([(None if c.context is None else (c.context.shape[2], c.context.dtype)) for c in convs])

    handle = ours.decoder.register_forward_hook(record)
    try:
        ours.decode(latent(7, seed=40))
    finally:
        handle.remove()
    carried = [(2, torch.float32)] * len(convs)
    assert held == [carried, carried, [None] * len(convs)]
    assert all(c.context is None and not c.carry_context for c in convs)


def test_decode_is_per_sample(ours):
    z = latent(3, seed=50, batch=2)
    both = ours.decode(z)
    assert both.shape == (2, 3, 9, 32, 48)
    assert max_diff(both[1:], ours.decode(z[1:])) <= 1e-5


def test_time_sliced_convolution_equals_one_call(ours, monkeypatch):
    z = latent(3, seed=60)
    whole = ours.decode(z, chunked=False)
    monkeypatch.setattr(vae_module, "SLICE_ELEMENTS", 4096)
    assert max_diff(ours.decode(z, chunked=False), whole) <= 1e-5


def test_decode_runs_in_module_dtype(ours):
    z = latent(3, seed=70)
    half = copy.deepcopy(ours).to(torch.bfloat16)
    got = half.decode(z)
    expected = ours.decode(z)
    assert got.dtype == torch.bfloat16
    assert max_diff(got, expected) <= 0.05 * expected.abs().max().item()


def test_encode_mean_matches_diffusers_mode(ours, reference, monkeypatch):
    x = torch.rand(2, 3, 9, 32, 48, generator=torch.Generator().manual_seed(80)) * 2 - 1
    monkeypatch.setattr(reference, "num_sample_frames_batch_size", 16)
    got = ours.encode(x)
    assert got.shape == (2, 16, 3, *LATENT_HW)
    assert max_diff(got, reference.encode(x).latent_dist.mode()) <= TOL


def test_encode_sample_matches_diffusers_sample(ours, reference, monkeypatch):
    x = torch.rand(1, 3, 5, 32, 48, generator=torch.Generator().manual_seed(90)) * 2 - 1
    monkeypatch.setattr(reference, "num_sample_frames_batch_size", 5)
    expected = reference.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(7))
    got = ours.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
    assert max_diff(got, expected) <= TOL
    assert max_diff(got, ours.encode(x)) > 1e-2


def video(frames: int, seed: int) -> torch.Tensor:
    return torch.rand(1, 3, frames, 32, 48, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encode_chunks_are_diffusers_frame_batches():
    """diffusers batches 8 frames, the first batch taking the remainder (its `_encode` loop)."""
    assert encode_chunks(49) == [(0, 9), (9, 17), (17, 25), (25, 33), (33, 41), (41, 49)]
    assert encode_chunks(21) == [(0, 13), (13, 21)]
    assert encode_chunks(13) == [(0, 13)] and encode_chunks(5) == [(0, 5)] and encode_chunks(1) == [(0, 1)]


@pytest.mark.parametrize("frames", [17, 21])
def test_chunked_encode_matches_diffusers_default_mean_and_sample(ours, reference, frames):
    """Several chunks (causal context carried, GroupNorm per chunk): the mean equals diffusers' mode, and the draw
    with a fixed generator its sample, with diffusers' default frame batching."""
    x = video(frames, seed=100 + frames)
    assert reference.num_sample_frames_batch_size == 8 and len(encode_chunks(frames)) == 2
    posterior = reference.encode(x).latent_dist
    assert max_diff(ours.encode(x), posterior.mode()) <= TOL
    expected = posterior.sample(generator=torch.Generator().manual_seed(5))
    assert max_diff(ours.encode(x, sample=True, generator=torch.Generator().manual_seed(5)), expected) <= TOL


def test_one_call_encode_matches_diffusers_in_one_batch(ours, reference, monkeypatch):
    x = video(17, seed=110)
    monkeypatch.setattr(reference, "num_sample_frames_batch_size", 17)
    posterior = reference.encode(x).latent_dist
    assert max_diff(ours.encode(x, chunked=False), posterior.mode()) <= TOL
    expected = posterior.sample(generator=torch.Generator().manual_seed(6))
    got = ours.encode(x, sample=True, generator=torch.Generator().manual_seed(6), chunked=False)
    assert max_diff(got, expected) <= TOL
    assert max_diff(got, ours.encode(x, chunked=False)) > 1e-2  # the draw is not the mean


def test_chunked_encode_differs_from_one_call_and_leaves_no_context(ours):
    """GroupNorm statistics per chunk make chunking more than a reordering; no context outlives the call."""
    x = video(17, seed=120)
    assert max_diff(ours.encode(x), ours.encode(x, chunked=False)) > 1e-3
    assert all(c.context is None and not c.carry_context for c in ours.encoder.modules()
               if isinstance(c, CausalConv3d))


def test_even_latent_frame_count_is_rejected(ours):
    for chunked in (True, False):
        with pytest.raises(ValueError, match="T=4 must be odd"):
            ours.decode(latent(4, seed=0), chunked=chunked)


@pytest.mark.parametrize("shape", [(1, 3, 8, 32, 48), (1, 3, 9, 30, 48), (1, 4, 9, 32, 48), (3, 9, 32, 48)])
def test_encode_rejects_shapes_it_cannot_round_trip(ours, shape):
    with pytest.raises(ValueError, match="video"):
        ours.encode(torch.zeros(shape))


def test_decode_rejects_wrong_latent_channels(ours):
    with pytest.raises(ValueError, match="latent must be"):
        ours.decode(torch.zeros(1, 8, 3, *LATENT_HW))


def test_tiny_config_is_the_test_config():
    def shapes(vae):
        return {k: v.shape for k, v in vae.state_dict().items()}

    assert shapes(CogVideoXVAE.tiny()) == shapes(CogVideoXVAE(**TINY))


def test_width_not_divisible_by_groupnorm_groups_is_rejected():
    with pytest.raises(ValueError, match="ch=48"):
        CogVideoXVAE(ch=48)
