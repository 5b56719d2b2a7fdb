"""The one generation API: load once, encode prompt sets, sample a plan with a controller, decode, write.

    pipeline = Pipeline(cfg, device)
    cond, = encode_prompt_sets(pipeline, [prompts])   # T5 loaded, every set encoded, T5 released
    load_sampling_models(pipeline)                    # then the DiT and the VAE decoder
    torch.manual_seed(seed)                           # the SDE noise comes from the global generator
    latent = sample_long(pipeline, layout, cond, controller, noise)   # or sample_clip(...)
    frames = pipeline.decode(latent)

`sample_long` and `sample_clip` are the two samplers every plan uses (multi- and single-prompt long
videos; the isolated baseline, editing and visualisation clips); `generate` runs a whole planned run
as the entry scripts do. Each sampler step ends with `controller.end_step()`, where controllers write
what the step collected.

With several `ranks` (torchrun, see distributed.py) every rank samples its share of each long video's
steps; rank 0 alone shows the progress, decodes and writes. A clip (editing, visualisation, the isolated
baseline) runs on rank 0 alone: its one batch cannot be split without changing the DiT batch, hence
the rounding.
"""
import os

import torch

from .attention import AttentionController, AttentionVisualizer, build_controller
from .console import say
from .distributed import Ranks
from .entry_points import RunPlan
from .multi_prompt import MultiPromptDenoiser, long_noise, window_conditions
from .pipeline import Pipeline, progress_bar
from .sampler import full_noise_discarding_first, sample_dpmpp_2m_sde, shared_row_noise
from .segment_layout import SegmentLayout
from .video_io import side_by_side, write_mp4


def encode_prompt_sets(pipeline: Pipeline, prompt_sets) -> list[torch.Tensor]:
    """(P, L, D) T5 features of each prompt set; T5 is loaded for them and released afterwards."""
    pipeline.load_text_encoder()
    embeds = [pipeline.encode(prompts) for prompts in prompt_sets]
    pipeline.release_text_encoder()
    return embeds


def load_sampling_models(pipeline: Pipeline) -> None:
    pipeline.load_dit()
    pipeline.load_vae()


def ending_steps(denoise, controller: AttentionController, ranks: Ranks = Ranks()):
    """`denoise` followed by the controller's `end_step` at every sampler step (with several ranks, after
    rank 0 has collected every rank's files of the step)."""
    def step(x, i, alpha, timestep):
        x0 = denoise(x, i, alpha, timestep)
        with ranks.together():  # rank 0 writes the step's files: a write error there ends every rank
            if ranks.size > 1:
                controller.collect_on_main(ranks)
            controller.end_step()
        return x0
    return step


def sample_long(pipeline: Pipeline, layout: SegmentLayout, embeds: torch.Tensor, controller: AttentionController,
                noise: torch.Tensor, share_work: bool = True, max_batch_windows: int = 2, progress=None,
                ranks: Ranks = Ranks()) -> torch.Tensor:
    """Final (1, L, C, H, W) latent of a long video: embeds (P, L, D) one per prompt, noise (1, L, C, H, W);
    every rank of `ranks` returns it, bitwise that of one process."""
    cond = window_conditions(layout, embeds)
    pipeline.dit.set_controller(controller)
    denoiser = MultiPromptDenoiser(pipeline.guided(), layout, cond, torch.zeros_like(cond), share_work=share_work,
                                   max_batch_windows=max_batch_windows, ranks=ranks)
    return sample_dpmpp_2m_sde(ending_steps(denoiser, controller, ranks), noise.clone().to(pipeline.device),
                               pipeline.schedule, full_noise_discarding_first, progress)


def sample_clip(pipeline: Pipeline, cond: torch.Tensor, controller: AttentionController, noise: torch.Tensor,
                progress=None) -> torch.Tensor:
    """Final (B, T, C, H, W) latents of B prompts cond (B, L, D) sampled as one batch from one window noise
    (1, T, C, H, W), sharing the SDE noise (the original's single-clip sampler). With two prompts the DiT
    batch is a source/target pair."""
    guided = pipeline.guided()
    uncond = torch.zeros_like(cond)
    pipeline.dit.set_controller(controller)

    def denoise(x, i, alpha, timestep):
        return guided(x, i, alpha, timestep, cond, uncond)

    x = noise.expand(cond.shape[0], *noise.shape[1:]).to(pipeline.device).contiguous()
    return sample_dpmpp_2m_sde(ending_steps(denoise, controller), x, pipeline.schedule, shared_row_noise, progress)


def run_noise(cfg, plan: RunPlan) -> torch.Tensor:
    """(1, L, C, H, W) fp32 initial noise drawn on the CPU from args.seed: the long latent, or one window."""
    args, network = cfg.args, cfg.model.network_config.params
    if plan.layout is not None:
        return long_noise(plan.layout, args.latent_channels, network.latent_height, network.latent_width, args.seed)
    shape = (1, args.sampling_num_frames, args.latent_channels, network.latent_height, network.latent_width)
    return torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))


def generate(cfg, plan: RunPlan, device: str, ranks: Ranks = Ranks()) -> dict:
    """Run a planned entry-point run end to end; returns the controllers, by name, after their generation.

    With several `ranks` every rank calls this: a long plan's steps are shared, a clip plan runs on rank 0
    alone (the other ranks return {} at once), the isolated baseline on rank 0 after the long videos.
    """
    if plan.layout is None:
        if not ranks.is_main:
            return {}
        ranks = Ranks()  # rank 0 alone, as one process
    args = cfg.args
    pipeline = Pipeline(cfg, device)
    with torch.no_grad():
        with ranks.together():  # loading can fail on one rank alone (out of memory)
            embeds, = encode_prompt_sets(pipeline, [plan.prompts])
            load_sampling_models(pipeline)
        noise = run_noise(cfg, plan)
        controllers = {}
        for name, files in plan.videos.items():
            controller = build_controller(name, args, args.output_dir, plan.prompt_pieces)
            torch.manual_seed(args.seed)
            if plan.layout is not None:
                layout = plan.layout
                description = (f"{name}: {len(plan.prompts)} prompts, {layout.num_windows} windows, "
                               f"{max(layout.num_windows - 1, 1)} window pairs/step")
                latent = sample_long(pipeline, layout, embeds, controller, noise, args.share_unshared_work,
                                     progress=progress_bar(description) if ranks.is_main else None, ranks=ranks)
            else:
                latent = sample_clip(pipeline, embeds, controller, noise,
                                     progress_bar(f"{name}: {len(plan.prompts)} prompt(s) in one batch"))
            with ranks.together():  # a failed write ends every rank with its status
                if ranks.is_main:
                    write_videos(pipeline, latent, files, controller, args)
            controllers[name] = controller
        if plan.isolated and ranks.is_main:  # after the long videos, when the other ranks are done
            torch.manual_seed(args.seed)
            write_isolated_baseline(pipeline, plan, embeds, noise, args)
    return controllers


def write_videos(pipeline: Pipeline, latent: torch.Tensor, files, controller: AttentionController, args) -> None:
    """Decode one controller's latent (B, T, C, H, W) and write its videos (and a visualiser's overview)."""
    frames = pipeline.decode(latent)  # (B, F, H, W, 3)
    say(f"wrote {write_mp4(os.path.join(args.output_dir, files.together), side_by_side(frames), args.sampling_fps)}")
    for file_name, video in zip(files.per_prompt, frames):
        say(f"wrote {write_mp4(os.path.join(args.output_dir, file_name), video, args.sampling_fps)}")
    if isinstance(controller, AttentionVisualizer):
        say(f"wrote {controller.write_overview(frames[0].numpy())}")


def write_isolated_baseline(pipeline: Pipeline, plan: RunPlan, embeds: torch.Tensor, noise: torch.Tensor,
                            args) -> None:
    """Each prompt alone on its base window's noise, plain attention, as a one-prompt clip (the SDE noise
    continues from one seed through the prompts)."""
    clips = []
    windows = plan.layout.base_windows
    for p, w in enumerate(windows):
        latent = sample_clip(pipeline, embeds[p:p + 1], AttentionController(), noise[:, plan.layout.window(w)],
                             progress_bar(f"isolated prompt {p + 1}/{len(windows)}"))
        clips.append(pipeline.decode(latent)[0])
        say(f"wrote {write_mp4(os.path.join(args.output_dir, plan.isolated[p]), clips[-1], args.sampling_fps)}")
    say(f"wrote {write_mp4(os.path.join(args.output_dir, plan.isolated[-1]), torch.cat(clips), args.sampling_fps)}")
