"""Our SAT DiT against diffusers' CogVideoXTransformer3DModel on the same random weights."""
import torch
import pytest
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed

from ditctrl.dit import DiffusionTransformer, timestep_embedding
from ditctrl.position_embedding import sincos_3d
from diffusers_transformer_reference import sat_to_diffusers
from ditctrl.synthetic_checkpoint import randomize_module

SMALL = dict(num_layers=2, hidden_size=256, num_attention_heads=4, time_embed_dim=128, text_hidden_size=64,
             text_length=7, latent_height=8, latent_width=12, num_frames=9)


@pytest.fixture(scope="module")
def models():
    ours = DiffusionTransformer(**SMALL)
    randomize_module(ours)
    ref = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=128,
        text_embed_dim=64, num_layers=2, sample_width=12, sample_height=8, sample_frames=9, patch_size=2,
        max_text_seq_length=7, spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0)
    ref.load_state_dict(sat_to_diffusers(ours.state_dict(), 256), strict=True)
    ref.norm_out.norm.eps = 1e-6  # SAT's final adaLN norm uses 1e-6, diffusers' default 1e-5
    return ours.eval(), ref.eval()


@pytest.mark.parametrize("frames", [3, 2])
def test_matches_diffusers(models, frames):
    ours, ref = models
    gen = torch.Generator().manual_seed(frames)
    x = torch.randn(2, frames, 16, 8, 12, generator=gen)
    context = torch.randn(2, 7, 64, generator=gen)
    t = torch.tensor([999, 519])
    with torch.no_grad():
        got = ours(x, t.float(), context)
        want = ref(hidden_states=x, encoder_hidden_states=context, timestep=t, return_dict=False)[0]
    assert got.shape == (2, frames, 16, 8, 12)
    assert got.abs().max() > 0.1  # the comparison is not between near-zero outputs
    assert (got - want).abs().max() <= 1e-4


def test_timestep_embedding_reference_values():
    e = timestep_embedding(torch.tensor([999.0]), 1920)[0]
    expected = torch.tensor([0.999650, 0.994918, -0.026461, 0.100692])
    assert torch.allclose(e[[0, 959, 960, 1919]], expected, atol=1e-5)


def test_position_table_reference_values():
    table = sincos_3d(1920, 13, 30, 45, 1.875)
    row = table[1669 - 226]  # video token (frame 1, row 2, column 3)
    expected = torch.tensor([0.841471, 0.540302, 0.999574, -0.029200, 0.875595, 0.483046])
    assert torch.allclose(row[[0, 240, 480, 840, 1200, 1560]], expected, atol=1e-5)


def test_full_size_state_dict_layout():
    """The 2B layout: 557 tensors (the fixed position table included), 1,693,783,872 learnable values."""
    with torch.device("meta"):
        model = DiffusionTransformer(num_layers=30, hidden_size=1920, num_attention_heads=30, time_embed_dim=512,
                                     text_hidden_size=4096, skip_init=True)
    sd = model.state_dict()
    assert len(sd) == 557
    table = sd.pop("mixins.pos_embed.pos_embedding")
    assert tuple(table.shape) == (1, 17776, 1920)
    assert sum(v.numel() for v in sd.values()) == 1_693_783_872
    assert tuple(sd["mixins.adaln_layer.adaLN_modulations.29.1.weight"].shape) == (23040, 512)
    assert tuple(sd["mixins.final_layer.linear.weight"].shape) == (64, 1920)


def test_sat_package_not_shadowed():
    import sat.model.base_model as base_model
    assert "site-packages" in base_model.__file__ or "dist-packages" in base_model.__file__


@pytest.fixture(scope="module")
def rotary_models():
    """The 5B-shaped DiT (3-D rotary position embedding) at test size, and diffusers' on the same weights."""
    ours = DiffusionTransformer(**SMALL, rotary_position_embedding=True)
    randomize_module(ours, seed=5)
    ref = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=128,
        text_embed_dim=64, num_layers=2, sample_width=12, sample_height=8, sample_frames=9, patch_size=2,
        max_text_seq_length=7, use_rotary_positional_embeddings=True)
    ref.load_state_dict(sat_to_diffusers(ours.state_dict(), 256), strict=True)
    ref.norm_out.norm.eps = 1e-6
    return ours.eval(), ref.eval()


@pytest.mark.parametrize("frames", [3, 2])
def test_rotary_model_matches_diffusers(rotary_models, frames):
    """diffusers' pipeline computes the rotary tables; at the configured grid its positions are the integers."""
    ours, ref = rotary_models
    gen = torch.Generator().manual_seed(10 + frames)
    x = torch.randn(2, frames, 16, 8, 12, generator=gen)
    context = torch.randn(2, 7, 64, generator=gen)
    t = torch.tensor([999, 519])
    rotary = get_3d_rotary_pos_embed(64, ((0, 0), (4, 6)), (4, 6), frames)
    with torch.no_grad():
        got = ours(x, t.float(), context)
        want = ref(hidden_states=x, encoder_hidden_states=context, timestep=t, image_rotary_emb=rotary,
                   return_dict=False)[0]
        plain = ref(hidden_states=x, encoder_hidden_states=context, timestep=t, return_dict=False)[0]
    assert got.abs().max() > 0.1
    assert (got - want).abs().max() <= 1e-4
    assert (got - plain).abs().max() > 1e-2  # the rotation takes part


def test_full_size_5b_layout_equals_diffusers():
    """CogVideoX-5B: 42 layers, width 3072, 48 heads; no position tensor; every tensor has diffusers' shape."""
    with torch.device("meta"):
        ours = DiffusionTransformer(num_layers=42, hidden_size=3072, num_attention_heads=48, time_embed_dim=512,
                                    text_hidden_size=4096, rotary_position_embedding=True, skip_init=True)
        ref = CogVideoXTransformer3DModel(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
    sd = ours.state_dict()
    assert len(sd) == 42 * 18 + 16
    mapped = {k: tuple(v.shape) for k, v in sat_to_diffusers(sd, 3072).items()}
    assert mapped == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
