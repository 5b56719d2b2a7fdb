"""SAT -> diffusers key mapping for the CogVideoX VAE (docs/weights.md, "Name map"), test-only."""
import re

from diffusers import AutoencoderKLCogVideoX


def sat_to_diffusers_key(key: str, num_levels: int) -> str:
    """Rename one SAT `3d-vae.pt` key to its `AutoencoderKLCogVideoX` name."""
    key = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", key)
    key = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", key)
    key = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m[1]) - 1}.", key)
    key = re.sub(r"^decoder\.up\.(\d+)\.block\.",
                 lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.resnets.", key)
    key = re.sub(r"^decoder\.up\.(\d+)\.upsample\.",
                 lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.upsamplers.0.", key)
    return key.replace(".nin_shortcut.", ".conv_shortcut.")


def diffusers_vae_from_sat(state_dict: dict, ch: int, ch_mult, num_res_blocks: int) -> AutoencoderKLCogVideoX:
    """Build diffusers' VAE with the matching configuration and load SAT-layout weights strictly (fp32, eval)."""
    vae = AutoencoderKLCogVideoX(
        block_out_channels=tuple(ch * m for m in ch_mult),
        layers_per_block=num_res_blocks,
        latent_channels=16,
        norm_num_groups=32,
        temporal_compression_ratio=4,
    )
    mapped = {sat_to_diffusers_key(k, len(ch_mult)): v for k, v in state_dict.items()}
    vae.load_state_dict(mapped, strict=True)
    return vae.eval()
