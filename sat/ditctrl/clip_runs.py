"""One-window runs of all prompts in one batch: word-swap / reweight editing and attention visualisation.

All prompts start from the same noise and share the SDE noise (the original's single sampler). With
two prompts the DiT batch is exactly (u_source, u_target, c_source, c_target), so KV-sharing,
mask-guided sharing and reweighting edit prompt 1 (target) against prompt 0 (source).
"""
import os
from dataclasses import dataclass

import torch

from .attention import build_controller
from .pipeline import progress_bar
from .runs import check_token_indices, seed_everything, start_run, user_errors
from .sampler import sample_dpmpp_2m_sde, shared_row_noise
from .video_io import side_by_side, write_mp4

EDIT_CONTROLLERS = ("KVSharingAdaLNMixin", "KVSharingMaskGuidedAdaLNMixin", "ReWeightAdaLNMixin", "BaseAdaLNMixin")


@dataclass
class ClipPlan:
    frames: int
    videos: dict  # controller name -> {"together": file, "per_prompt": [files]}

    @property
    def files(self):
        return [f for v in self.videos.values() for f in (v["together"], *v["per_prompt"])]


def planner(stem: str, prompt_roles):
    """Output names: `{stem}_frames{F}.mp4` (all prompts side by side) plus one file per prompt role."""
    def plan(cfg, prompts) -> ClipPlan:
        frames = 4 * (cfg.args.sampling_num_frames - 1) + 1
        names = list(cfg.args.adaln_mixin_names)
        videos = {}
        for name in names:
            tag = f"_{name}" if len(names) > 1 else ""
            videos[name] = {
                "together": f"{stem}{tag}_frames{frames}.mp4",
                "per_prompt": [f"{stem}{tag}_{role}_frames{frames}.mp4" for role in prompt_roles] if len(prompt_roles) > 1 else [],
            }
        return ClipPlan(frames, videos)
    return plan


def check_edit_prompts(args, prompts, counts):
    """Editing pairs a source with a target: exactly two prompts, token indices inside both."""
    if len(prompts) != 2:
        raise ValueError(f"editing needs exactly 2 prompts (source, target), got {len(prompts)}")
    unknown = [n for n in args.adaln_mixin_names if n not in EDIT_CONTROLLERS]
    if unknown:
        raise ValueError(f"controller {unknown[0]} cannot edit; use one of {', '.join(EDIT_CONTROLLERS)}")
    if "ReWeightAdaLNMixin" in args.adaln_mixin_names:
        if counts[0] != counts[1]:
            raise ValueError(f"reweighting needs prompts with the same number of tokens, got {counts[0]} and "
                             f"{counts[1]} (the token index must name the same word in both)")
        check_token_indices(counts, [("reweight_token_idx", args.reweight_token_idx, (0, 1))])
    if "KVSharingMaskGuidedAdaLNMixin" in args.adaln_mixin_names:
        check_token_indices(counts, [("ref_token_idx", list(args.ref_token_idx), (0,)),
                                     ("cur_token_idx", list(args.cur_token_idx), (1,))])


def check_visualize_prompts(args, prompts, counts):
    if len(prompts) != 1:
        raise ValueError(f"visualisation takes exactly 1 prompt, got {len(prompts)}")
    if list(args.adaln_mixin_names) != ["VisualizeAdaLNMixin"]:
        raise ValueError("visualisation runs the VisualizeAdaLNMixin controller only (adaln_mixin_names)")
    check_token_indices(counts, [("attn_map_token_idx", list(args.attn_map_token_idx), (0,))])


def run(argv, stem: str, prompt_roles, check_prompts, after_sampling=None):
    """Sample all prompts as one batch per controller and write the videos; `after_sampling(controller, frames)`."""
    with user_errors():
        cfg, prompts, plan, pipeline = start_run(argv, planner(stem, prompt_roles), check_prompts)
    args = cfg.args
    network = cfg.model.network_config.params
    shape = (1, args.sampling_num_frames, args.latent_channels, network.latent_height, network.latent_width)
    with torch.no_grad():
        cond = pipeline.encode(prompts)
        uncond = torch.zeros_like(cond)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed)).expand(len(prompts), *shape[1:])
        for name, files in plan.videos.items():
            seed_everything(args.seed)
            controller = build_controller(name, args, args.output_dir)
            pipeline.dit.set_controller(controller)
            guided = pipeline.guided()
            latent = sample_dpmpp_2m_sde(lambda x, i, a, t: guided(x, i, a, t, cond, uncond),
                                         noise.to(pipeline.device).contiguous(), pipeline.schedule, shared_row_noise,
                                         progress_bar(f"{name}: {len(prompts)} prompt(s) in one batch"))
            frames = pipeline.decode(latent)  # (P, F, H, W, 3)
            out = args.output_dir
            print(f"wrote {write_mp4(os.path.join(out, files['together']), side_by_side(frames), args.sampling_fps)}")
            for file_name, video in zip(files["per_prompt"], frames):
                write_mp4(os.path.join(out, file_name), video, args.sampling_fps)
            if after_sampling is not None:
                after_sampling(controller, frames)
