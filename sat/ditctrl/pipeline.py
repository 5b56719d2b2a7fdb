"""Building the CogVideoX parts from a resolved config and running them in a memory-frugal order.

The run loads T5, encodes, releases it and only then places the DiT on the device; the VAE decodes in chunks.
Where the weights are and in which layout: `weights.py`.
"""
from functools import partial

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from .attention.kernels import set_backend
from .checkpoints import POSITION_TABLE_KEY, StateDictSource, load_strict
from .dit import DiffusionTransformer
from .guided_denoiser import GuidedDenoiser
from .meta_device import OnMetaDevice
from .schedule import sampling_schedule
from .text_encoder import T5TextEncoder
from .vae import CogVideoXVAE
from .weights import transformer_source, vae_source, weight_paths


def run_dtype(args) -> torch.dtype:
    return torch.float16 if args.fp16 else torch.bfloat16 if args.bf16 else torch.float32


def allocate_empty(module_type, params: dict, device, dtype) -> torch.nn.Module:
    """`module_type(**params)` with uninitialised weights, allocated once on `device` in `dtype` (no init pass,
    no CPU or fp32 copy on the way)."""
    with OnMetaDevice():
        module = module_type(**params).to(dtype)
    return module.to_empty(device=device)


def load_weights(module, weights, what: str, ignore=()) -> None:
    """`load_strict` from `weights` (a state dict or a tensor source), except that a tensor of an in-memory state
    dict already on the module's device in its dtype and shape becomes the module's tensor as it is
    (memory-mapped pages are not copied: the CPU holds one copy)."""
    state_dict = weights.state_dict if isinstance(weights, StateDictSource) else weights
    if isinstance(state_dict, dict):
        targets = module.state_dict()
        ready = {key: value for key, value in state_dict.items() if key in targets and
                 (value.shape, value.dtype, value.device) == (targets[key].shape, targets[key].dtype, targets[key].device)}
        module.load_state_dict(ready, strict=False, assign=True)
    load_strict(module, weights, what, ignore)  # checks every key; adopted tensors copy onto themselves


def build_transformer(network_params: dict, weights, device, dtype) -> DiffusionTransformer:
    """The DiT with the checkpoint's weights (a state dict or a tensor source), allocated once on `device` in `dtype`."""
    model = allocate_empty(DiffusionTransformer, {**network_params, "skip_init": True}, device, dtype)
    model.get_mixin("pos_embed").reinit()  # the fixed table is recomputed, never read from the file
    load_weights(model, weights, "transformer", ignore={POSITION_TABLE_KEY})
    return model.eval().requires_grad_(False)


def build_vae_decoder(cfg, device, dtype, keep_encoder: bool = False) -> CogVideoXVAE:
    """The VAE with the checkpoint's decoder on `device`; the encoder, unused when sampling, is checked by the
    strict load on the CPU and then dropped, unless `keep_encoder` (editing the user's video) keeps it on `device`."""
    params = OmegaConf.to_container(cfg.model.first_stage_config.params)
    with OnMetaDevice():
        vae = CogVideoXVAE(**params).to(dtype)
    vae.encoder.to_empty(device=device if keep_encoder else "cpu")
    vae.decoder.to_empty(device=device)
    load_weights(vae, vae_source(weight_paths(cfg), params), "VAE")
    if not keep_encoder:
        vae.encoder = None
    return vae.eval().requires_grad_(False)


def one_call_decode_gib(vae_params: dict, video_frames: int, height: int, width: int, dtype) -> float:
    """Memory of decoding `video_frames` frames in one VAE call, estimated from its two largest tensors: the
    input and output of the upsampling conv that reaches full resolution (widths[1] channels at height×width)."""
    channels = vae_params["ch"] * vae_params["ch_mult"][1]
    return 2 * video_frames * channels * height * width * (torch.finfo(dtype).bits // 8) / 2**30


def check_decode_memory(cfg, video_frames: int, device) -> None:
    """Refuse, before any model work, a one-call decode (`vae_chunked_decode: False`) that cannot fit the GPU."""
    device = torch.device(device)
    if cfg.args.vae_chunked_decode or device.type != "cuda":
        return
    network = cfg.model.network_config.params
    scale = 2 ** (len(cfg.model.first_stage_config.params.ch_mult) - 1)
    need = one_call_decode_gib(OmegaConf.to_container(cfg.model.first_stage_config.params), video_frames,
                               network.latent_height * scale, network.latent_width * scale, run_dtype(cfg.args))
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    if need > total:
        raise ValueError(f"vae_chunked_decode: False decodes the {video_frames} frames in one call, about "
                         f"{need:.0f} GiB, more than the {total:.0f} GiB of {torch.cuda.get_device_name(device)}; "
                         f"set args.vae_chunked_decode=True (the default: one chunk of frames at a time)")


def progress_bar(description: str):
    """A tqdm factory for the samplers' step loop."""
    return partial(tqdm, desc=description, unit="step", dynamic_ncols=True)


class Pipeline:
    """The models of one run, each loaded by an explicit call: T5 (`load_text_encoder`, `encode` any number of
    prompt sets, `release_text_encoder`), then the DiT (`load_dit`) and the VAE decoder (`load_vae`; with its
    encoder for `encode_frames` when editing the user's video, then `release_vae_encoder`)."""

    def __init__(self, cfg, device: str):
        self.cfg, self.args, self.device = cfg, cfg.args, torch.device(device)
        self.dtype = run_dtype(cfg.args)
        self.offload = bool(cfg.args.offload)
        set_backend(cfg.args.attention_backend)
        self.text_encoder = self.dit = self.vae = None
        self.network_params = OmegaConf.to_container(cfg.model.network_config.params)
        sampler = OmegaConf.to_container(cfg.model.sampler_config.params)
        self.schedule = sampling_schedule(sampler["num_steps"], sampler["shift_scale"])
        self.sampler_params = sampler
        self.scale_factor = cfg.model.scale_factor

    def load_text_encoder(self) -> None:
        paths = weight_paths(self.cfg)
        self.text_encoder = T5TextEncoder(paths["t5"], device=self.device, dtype=self.dtype,
                                          max_length=self.cfg.model.conditioner_config.params.max_length,
                                          tokenizer_folder=paths["tokenizer"])

    def encode(self, prompts) -> torch.Tensor:
        """(P, L, D) T5 features of the prompts."""
        if self.text_encoder is None:
            raise RuntimeError("load_text_encoder() before encode()")
        return self.text_encoder.encode(prompts)

    def release_text_encoder(self) -> None:
        self.text_encoder.release()
        self.text_encoder = None

    def load_dit(self) -> None:
        self.dit = build_transformer(self.network_params, transformer_source(weight_paths(self.cfg)), self.device,
                                     self.dtype)
        self.dit.compile_elementwise(self.args.compile_dit)

    def load_vae(self, keep_encoder: bool = False) -> None:
        self.vae = build_vae_decoder(self.cfg, "cpu" if self.offload else self.device, self.dtype, keep_encoder)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (F, H, W, 3) frames, F = 4k+1 -> their (1, k+1, C, H/8, W/8) fp32 latent as the DiT takes it
        (posterior mean × scale factor), encoded in the run dtype on the run device, one chunk of frames at a
        time. Needs `load_vae(keep_encoder=True)`."""
        if self.vae is None or self.vae.encoder is None:
            raise RuntimeError("load_vae(keep_encoder=True) before encode_frames()")
        if self.offload:
            self.vae.to(self.device)
        video = frames.permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1  # (1, 3, F, H, W) in [-1, 1]
        latent = self.vae.encode(video.to(self.device, self.dtype)).float() * self.scale_factor
        if self.offload:
            self.vae.to("cpu")
        return latent.permute(0, 2, 1, 3, 4).contiguous()

    def release_vae_encoder(self) -> None:
        """Drop the VAE encoder once the source video is encoded (sampling and decoding never use it)."""
        self.vae.encoder = None

    def guided(self) -> GuidedDenoiser:
        sampler = self.sampler_params
        return GuidedDenoiser(self.dit, sampler_steps=sampler["num_steps"], cfg_steps=sampler["cfg_num_steps"],
                              cfg_scale=sampler["cfg_scale"], cfg_exp=sampler["cfg_exp"],
                              shift_scale=sampler["shift_scale"])

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) fp32 latent -> (B, F, H·8, W·8, 3) uint8 frames on the CPU (truncated like the original).

        One row at a time, as the original (`en_and_decode_n_samples_a_time: 1`): an edit's two videos need the
        memory of one."""
        if self.offload:
            self.dit.to("cpu")
            self.vae.to(self.device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand the sampling activations' cached blocks to the decoder
        frames = torch.cat([self._decode_row(row) for row in latent.split(1)])
        if self.offload:
            self.vae.to("cpu")
            self.dit.to(self.device)
        return frames

    def _decode_row(self, latent: torch.Tensor) -> torch.Tensor:
        """(1, T, C, H, W) latent -> (1, F, H·8, W·8, 3) uint8 frames on the CPU."""
        z = (latent.to(self.dtype) / self.scale_factor).permute(0, 2, 1, 3, 4)
        video = self.vae.decode(z.to(self.device), chunked=self.args.vae_chunked_decode)  # (1, 3, F, H, W)
        frames = ((video.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)
        return (255 * frames).to(torch.uint8).cpu()
