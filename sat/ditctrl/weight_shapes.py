"""The weights' tensor names and shapes against the model the config describes, before any model work.

Safetensors headers only; a SAT `.pt` file is opened memory-mapped. The DiT and VAE are built on the meta device
for their shapes, so SAT and torch load here; `weights.check_weight_files` checks the files are there without them.
"""
from omegaconf import OmegaConf

from .checkpoints import POSITION_TABLE_KEY, check_t5_weights, model_shapes
from .dit import DiffusionTransformer
from .meta_device import OnMetaDevice
from .vae import CogVideoXVAE
from .weights import transformer_source, vae_source


def check_weight_shapes(cfg, paths: dict) -> None:
    """The DiT, VAE and T5 files at `paths` (from `weights.check_weight_files(cfg)`) hold exactly the tensors of the
    model `cfg.model` describes, in their shapes; one ValueError names the first offenders and their files."""
    network = OmegaConf.to_container(cfg.model.network_config.params)
    vae_params = OmegaConf.to_container(cfg.model.first_stage_config.params)
    with OnMetaDevice():  # shapes only: no layer allocated, not even where SAT names the CPU
        dit = DiffusionTransformer(**network, skip_init=True)
        vae = CogVideoXVAE(**vae_params)
    transformer_source(paths).check(model_shapes(dit), "transformer", ignore={POSITION_TABLE_KEY})
    vae_source(paths, vae_params).check(model_shapes(vae), "VAE")
    check_t5_weights(paths["t5"])
