"""Our SAT DiT against diffusers' CogVideoXTransformer3DModel on the same random weights."""
import torch
import pytest
from diffusers import CogVideoXTransformer3DModel

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
    ref.norm_out.norm.eps = 1e-6  # SAT's final adaLN norm uses 1e-6, diffusers' default 1e-5 (spec §6.4.1)
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
