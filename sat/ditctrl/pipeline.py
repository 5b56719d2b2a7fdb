"""Building the CogVideoX parts from a resolved config and running them in a memory-frugal order.

T5 is built, used and released before the DiT is placed on the device; the VAE decodes in chunks.
Where the weights are and in which layout: `weights.py` (re-exported here).
"""
from functools import partial

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from .attention.kernels import set_backend
from .checkpoints import POSITION_TABLE_KEY, load_strict
from .dit import DiffusionTransformer
from .guided_denoiser import GuidedDenoiser
from .schedule import sampling_schedule
from .text_encoder import T5TextEncoder
from .vae import CogVideoXVAE
from .weights import check_weights, transformer_source, vae_source, weight_path, weight_paths  # noqa: F401

def run_dtype(args) -> torch.dtype:
    return torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else torch.float32


def allocate_empty(module_type, params: dict, device, dtype) -> torch.nn.Module:
    """`module_type(**params)` with uninitialised weights, allocated once on `device` in `dtype` (no init pass)."""
    with torch.device("meta"):
        module = module_type(**params).to(dtype)
    return module.to_empty(device=device)


def build_transformer(network_params: dict, weights, device, dtype) -> DiffusionTransformer:
    """The DiT with the checkpoint's weights (a state dict or a tensor source), allocated once on `device` in `dtype`."""
    model = allocate_empty(DiffusionTransformer, {**network_params, "skip_init": True}, device, dtype)
    model.get_mixin("pos_embed").reinit()  # the fixed table is recomputed, never read from the file
    load_strict(model, weights, "transformer", ignore={POSITION_TABLE_KEY})
    return model.eval().requires_grad_(False)


def build_vae(cfg, device, dtype) -> CogVideoXVAE:
    params = OmegaConf.to_container(cfg.model.first_stage_config.params)
    vae = allocate_empty(CogVideoXVAE, params, device, dtype)
    load_strict(vae, vae_source(weight_paths(cfg), params), "VAE")
    return vae.eval().requires_grad_(False)


def progress_bar(description: str):
    """A tqdm factory for the samplers' step loop."""
    return partial(tqdm, desc=description, unit="step", dynamic_ncols=True)


class Pipeline:
    """The loaded model of one run: encode prompts, then sample with the DiT, then decode with the VAE."""

    def __init__(self, cfg, device: str):
        self.cfg, self.args, self.device = cfg, cfg.args, torch.device(device)
        self.dtype = run_dtype(cfg.args)
        self.offload = bool(cfg.args.offload)
        set_backend(cfg.args.attention_backend)
        paths = weight_paths(cfg)
        self.text_encoder = T5TextEncoder(paths["t5"], device=self.device, dtype=self.dtype,
                                          max_length=cfg.model.conditioner_config.params.max_length,
                                          tokenizer_folder=paths["tokenizer"])
        self.network_params = OmegaConf.to_container(cfg.model.network_config.params)
        self.dit = None
        self.vae = build_vae(cfg, "cpu" if self.offload else self.device, self.dtype)
        sampler = OmegaConf.to_container(cfg.model.sampler_config.params)
        self.schedule = sampling_schedule(sampler["num_steps"], sampler["shift_scale"])
        self.sampler_params = sampler
        self.scale_factor = cfg.model.scale_factor

    def encode(self, prompts) -> torch.Tensor:
        """(P, L, D) T5 features of the prompts; T5 is released afterwards and the DiT is loaded."""
        embeds = self.text_encoder.encode(prompts)
        self.text_encoder.release()
        self.dit = build_transformer(self.network_params, transformer_source(weight_paths(self.cfg)), self.device,
                                     self.dtype)
        return embeds

    def guided(self) -> GuidedDenoiser:
        return GuidedDenoiser(self.dit, self.sampler_params["cfg_scale"], self.sampler_params["cfg_exp"],
                              self.schedule.num_steps)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) fp32 latent -> (B, F, H·8, W·8, 3) uint8 frames (truncated like the original)."""
        if self.offload:
            self.dit.to("cpu")
            self.vae.to(self.device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand the sampling activations' cached blocks to the decoder
        z = (latent.to(self.dtype) / self.scale_factor).permute(0, 2, 1, 3, 4)
        video = self.vae.decode(z.to(self.device), chunked=self.args.vae_chunked_decode)  # (B, 3, F, H, W)
        if self.offload:
            self.vae.to("cpu")
            self.dit.to(self.device)
        frames = ((video.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)
        return (255 * frames).to(torch.uint8).cpu()
