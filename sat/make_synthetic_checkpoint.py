"""Write random-weight CogVideoX checkpoints in exactly the layouts of the real download.

    python sat/make_synthetic_checkpoint.py --tiny                  # the CPU default (cached)
    python sat/make_synthetic_checkpoint.py --device cuda           # full-size 2B shapes, for benchmarks

Paths come from the same configs the samplers read (`args.load`, the VAE `ckpt_path`, the T5
`model_dir`), so the samplers then load these files through their real loading code. Existing
checkpoints are kept unless --force is given. Videos from these weights are noise: they prove the
machinery, not the picture.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from ditctrl.config import MODEL_CONFIG, TINY_MODEL_CONFIG, load_config  # noqa: E402
from ditctrl.dit import DiffusionTransformer  # noqa: E402
from ditctrl.pipeline import check_weights, weight_paths  # noqa: E402
from ditctrl.checkpoints import MissingCheckpointError  # noqa: E402
from ditctrl.synthetic_checkpoint import (randomize_module, write_t5_folder, write_transformer_checkpoint,  # noqa: E402
                                          write_vae_checkpoint)
from ditctrl.vae import CogVideoXVAE  # noqa: E402

FULL_T5 = dict(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64)  # t5-v1_1-xxl


def build_random(module_type, params: dict, device: str, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    with torch.device("meta"):
        module = module_type(**params)
    module.to_empty(device=device)
    randomize_module(module, seed)
    return module.to(dtype)


def write_synthetic_checkpoints(cfg, device: str = "cpu", seed: int = 0) -> dict:
    """Write the transformer, VAE and T5 of `cfg` with random weights; returns their paths."""
    paths = weight_paths(cfg)
    dtype = torch.float16 if cfg.args.fp16 else torch.bfloat16 if cfg.args.bf16 else torch.float32
    network = OmegaConf.to_container(cfg.model.network_config.params)
    dit = build_random(DiffusionTransformer, {**network, "skip_init": True}, device, dtype, seed)
    write_transformer_checkpoint({k: v.cpu() for k, v in dit.state_dict().items()}, paths["transformer"])
    del dit
    vae = build_random(CogVideoXVAE, OmegaConf.to_container(cfg.model.first_stage_config.params), device,
                       torch.float32, seed + 1)
    write_vae_checkpoint({k: v.cpu() for k, v in vae.state_dict().items()}, paths["vae"])
    del vae
    t5 = OmegaConf.to_container(cfg.model.tiny_t5) if "tiny_t5" in cfg.model else FULL_T5
    if t5["d_model"] != network["text_hidden_size"]:
        raise ValueError(f"T5 d_model {t5['d_model']} != the DiT's text_hidden_size {network['text_hidden_size']}")
    write_t5_folder(paths["t5"], **t5, dtype=dtype if dtype != torch.float32 else torch.float16, seed=seed + 2,
                    device=device)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", nargs="*", default=[MODEL_CONFIG], help="model config files (as the samplers)")
    parser.add_argument("--tiny", action="store_true", help="the tiny CPU model (configs/cogvideox_tiny.yaml)")
    parser.add_argument("--device", default="cpu", help="where the random weights are generated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite existing checkpoints")
    options = parser.parse_args(argv)
    cfg = load_config([*options.base, *([TINY_MODEL_CONFIG] if options.tiny else [])], require_prompts=False)
    if not options.force:
        try:
            check_weights(cfg)
            print(f"synthetic checkpoints already present: {weight_paths(cfg)}")
            return
        except MissingCheckpointError:
            pass
    for name, path in write_synthetic_checkpoints(cfg, options.device, options.seed).items():
        print(f"wrote random-weight {name}: {path}")


if __name__ == "__main__":
    main()
