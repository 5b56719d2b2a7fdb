"""Building the models from checkpoint files, as the entry scripts do."""
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ditctrl import weight_shapes, weights
from diffusers_vae_reference import diffusers_vae_from_sat
from ditctrl.checkpoints import POSITION_TABLE_KEY, read_transformer_state_dict, read_vae_state_dict
from ditctrl.config import MODEL_CONFIG, TINY_MODEL_CONFIG, load_config
from ditctrl.dit import DiffusionTransformer
from ditctrl.pipeline import Pipeline, allocate_empty, build_transformer
from ditctrl.synthetic_checkpoint import write_transformer_checkpoint
from ditctrl.synthetic_folders import ensure_synthetic_checkpoints
from tiny_models import SMALL_DIT, small_dit


def test_built_transformer_equals_the_model_it_was_saved_from(tmp_path):
    """Weights come from the file; the fixed position table is recomputed after the empty allocation."""
    reference = small_dit(seed=3)
    write_transformer_checkpoint(reference.state_dict(), str(tmp_path / "transformer"))
    built = build_transformer(SMALL_DIT, read_transformer_state_dict(str(tmp_path / "transformer")), "cpu",
                              torch.float32)
    assert torch.equal(built.get_mixin("pos_embed").pos_embedding, reference.get_mixin("pos_embed").pos_embedding)
    x, t, context = torch.randn(2, 3, 16, 4, 6), torch.tensor([999.0, 19.0]), torch.randn(2, 7, 24)
    with torch.no_grad():
        assert torch.equal(built(x, t, context), reference(x, t, context))


def test_built_transformer_holds_weights_in_the_run_dtype(tmp_path):
    write_transformer_checkpoint(small_dit().state_dict(), str(tmp_path / "transformer"))
    built = build_transformer(SMALL_DIT, read_transformer_state_dict(str(tmp_path / "transformer")), "cpu",
                              torch.bfloat16)
    assert {p.dtype for p in built.parameters()} == {torch.bfloat16}


class NewStorages(TorchDispatchMode):
    """Every tensor storage an op creates off the meta device (an output storage that is none of its inputs')."""

    def __init__(self):
        super().__init__()
        self.created = []  # (dtype, bytes)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        known = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
                 and t.device.type != "meta"}
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.untyped_storage().data_ptr() not in known:
                known.add(t.untyped_storage().data_ptr())
                self.created.append((t.dtype, t.untyped_storage().nbytes()))
        return out


def test_allocation_in_the_run_dtype_makes_no_fp32_copy_of_the_layers():
    """SAT builds its layers with an explicit device=cpu in fp32; allocate_empty must still allocate each weight
    once, in bf16. Only the position table is computed in fp32/fp64 (from numpy) before the allocation."""
    network = OmegaConf.to_container(OmegaConf.load(TINY_MODEL_CONFIG).model.network_config.params)
    with NewStorages() as spy:
        model = allocate_empty(DiffusionTransformer, {**network, "skip_init": True}, "cpu", torch.bfloat16)
    table = model.get_mixin("pos_embed").pos_embedding
    model_bytes = sum(t.untyped_storage().nbytes() for t in model.state_dict().values())
    in_run_dtype = sum(nbytes for dtype, nbytes in spy.created if dtype == torch.bfloat16)
    others = [nbytes for dtype, nbytes in spy.created if dtype != torch.bfloat16]
    assert model_bytes <= in_run_dtype <= model_bytes + table.numel() * 2  # + the table's cast before allocation
    assert max(others) <= table.numel() * 8  # the table in float64, the largest fp32/fp64 temporary
    assert sum(others) <= 4 * table.numel() * 8 < model_bytes / 10


def test_weights_already_in_the_run_dtype_are_used_from_the_memory_mapped_file(tmp_path):
    """A file in the run dtype is not copied on the CPU: the model's weights are the file's mapped pages."""
    write_transformer_checkpoint(small_dit().to(torch.bfloat16).state_dict(), str(tmp_path / "transformer"))
    state_dict = read_transformer_state_dict(str(tmp_path / "transformer"))
    built = build_transformer(SMALL_DIT, state_dict, "cpu", torch.bfloat16)
    weights = built.state_dict()
    assert all(weights[key].data_ptr() == value.data_ptr() for key, value in state_dict.items())
    converted = build_transformer(SMALL_DIT, state_dict, "cpu", torch.float32)  # another dtype: converted copies
    assert all(converted.state_dict()[key].dtype == torch.float32 for key in state_dict)


def test_weight_check_builds_the_dit_without_allocating_its_layers(monkeypatch):
    """check_weight_shapes compares shapes only: the DiT it builds for them holds no layer weight in memory (SAT
    names the CPU for its layers; only the position table, computed from numpy, is real)."""
    cfg = load_config([MODEL_CONFIG, TINY_MODEL_CONFIG], require_prompts=False)
    ensure_synthetic_checkpoints(cfg)
    built, shapes_of = [], weight_shapes.model_shapes
    monkeypatch.setattr(weight_shapes, "model_shapes", lambda module: built.append(module) or shapes_of(module))
    weight_shapes.check_weight_shapes(cfg, weights.check_weight_files(cfg))
    dit = next(module for module in built if isinstance(module, DiffusionTransformer))
    assert {key for key, t in dit.state_dict().items() if t.device.type != "meta"} == {POSITION_TABLE_KEY}


def test_decode_takes_one_row_at_a_time_as_the_original():
    """An edit's (2, T, C, H, W) latent reaches the VAE one row at a time (the original's
    `en_and_decode_n_samples_a_time: 1`), so two videos need the decode memory of one; each row's frames are its
    own decode, (x + 1) / 2 in [0, 255]."""
    cfg = load_config([MODEL_CONFIG, TINY_MODEL_CONFIG], require_prompts=False)
    ensure_synthetic_checkpoints(cfg)
    pipeline = Pipeline(cfg, "cpu")
    pipeline.load_vae()
    seen, decode = [], pipeline.vae.decode
    pipeline.vae.decode = lambda z, chunked: seen.append(z.shape[0]) or decode(z, chunked)
    network = cfg.model.network_config.params
    latent = torch.randn(2, 3, 16, network.latent_height, network.latent_width,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        frames = pipeline.decode(latent)
        for row in range(2):
            video = decode((latent[row:row + 1] / cfg.model.scale_factor).permute(0, 2, 1, 3, 4), True)
            expected = (255 * ((video.float() + 1) / 2).clamp(0, 1)).to(torch.uint8).permute(0, 2, 3, 4, 1)
            assert torch.equal(frames[row:row + 1], expected)
    assert seen == [1, 1] and frames.shape == (2, 9, 8 * network.latent_height, 8 * network.latent_width, 3)


def test_vae_keeps_its_encoder_only_when_asked_and_encodes_frames_as_the_dit_takes_them():
    """load_vae() drops the encoder; load_vae(keep_encoder=True) keeps the checkpoint's, and encode_frames gives
    diffusers' posterior mode of the frames in [-1, 1] (default frame batching) × scale_factor, as (1, T, C, h, w)."""
    cfg = load_config([MODEL_CONFIG, TINY_MODEL_CONFIG], require_prompts=False)
    ensure_synthetic_checkpoints(cfg)
    pipeline = Pipeline(cfg, "cpu")
    pipeline.load_vae()
    assert pipeline.vae.encoder is None
    pipeline.load_vae(keep_encoder=True)
    checkpoint = read_vae_state_dict(weights.weight_paths(cfg)["vae"])
    assert all(torch.equal(value, checkpoint[f"encoder.{key}"])
               for key, value in pipeline.vae.encoder.state_dict().items())
    frames = torch.randint(0, 256, (17, 32, 48, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    latent = pipeline.encode_frames(frames)
    params = OmegaConf.to_container(cfg.model.first_stage_config.params)
    reference = diffusers_vae_from_sat(checkpoint, params["ch"], params["ch_mult"], params["num_res_blocks"])
    with torch.no_grad():
        mode = reference.encode(frames.permute(3, 0, 1, 2)[None].float() / 127.5 - 1).latent_dist.mode()
    assert latent.shape == (1, 5, 16, 4, 6) and latent.dtype == torch.float32
    torch.testing.assert_close(latent, (mode * cfg.model.scale_factor).permute(0, 2, 1, 3, 4), rtol=0, atol=1e-4)
    pipeline.release_vae_encoder()
    with pytest.raises(RuntimeError, match="keep_encoder=True"):
        pipeline.encode_frames(frames)
