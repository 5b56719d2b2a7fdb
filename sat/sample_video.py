"""DiTCtrl multi-prompt (and single-prompt) long video generation on CogVideoX-2B.

    python sat/sample_video.py --base configs/cogvideox_2b.yaml configs/inference.yaml \
        --custom-config inference_case_configs/multi_prompts/rose.yaml [--tiny]

Writes `{output_dir}/MultiPrompt_frames{N}.mp4` (one per controller in `adaln_mixin_names`; with
several, the controller name is part of the file name), `params.yaml` with the resolved config, and
with `is_run_isolated: True` each prompt's own clip under `isolated/`.
"""
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from ditctrl.attention import AttentionController, build_controller  # noqa: E402
from ditctrl.errors import guarded  # noqa: E402
from ditctrl.multi_prompt import MultiPromptDenoiser, long_noise, window_conditions  # noqa: E402
from ditctrl.pipeline import progress_bar  # noqa: E402
from ditctrl.runs import check_token_indices, seed_everything, start_run, user_errors  # noqa: E402
from ditctrl.sampler import full_noise_discarding_first, sample_dpmpp_2m_sde, shared_row_noise  # noqa: E402
from ditctrl.segment_layout import SegmentLayout, segment_layout  # noqa: E402
from ditctrl.video_io import prompt_stem, write_mp4  # noqa: E402


@dataclass
class Plan:
    layout: SegmentLayout
    long_videos: dict    # controller name -> file name
    isolated: list       # one file per prompt, then the concatenation

    @property
    def files(self):
        return [*self.long_videos.values(), *self.isolated]


def plan_outputs(cfg, prompts) -> Plan:
    args = cfg.args
    layout = segment_layout(len(prompts), args.sampling_num_frames, args.overlap_size, args.num_transition_blocks,
                            args.longer_mid_segment)
    names = list(args.adaln_mixin_names)
    long_videos = {name: f"MultiPrompt{'_' + name if len(names) > 1 else ''}_frames{layout.video_frames}.mp4"
                   for name in names}
    clip_frames = 4 * (layout.tile - 1) + 1
    isolated = []
    if args.is_run_isolated:
        isolated = [f"isolated/{p}_{prompt_stem(prompt)}_frames{clip_frames}.mp4" for p, prompt in enumerate(prompts)]
        isolated.append(f"isolated/all_frames{clip_frames * len(prompts)}.mp4")
    return Plan(layout, long_videos, isolated)


def isolated_baseline(pipeline, plan, cond, uncond, noise, args):
    """Each prompt alone on its base window's noise, plain attention, the single-window sampler."""
    pipeline.dit.set_controller(AttentionController())
    guided = pipeline.guided()
    clips = []
    for p, w in enumerate(plan.layout.base_windows):
        x = noise[:, plan.layout.window(w)].to(pipeline.device)
        latent = sample_dpmpp_2m_sde(lambda x, i, a, t: guided(x, i, a, t, cond[w:w + 1], uncond[w:w + 1]),
                                     x, pipeline.schedule, shared_row_noise,
                                     progress_bar(f"isolated prompt {p + 1}/{len(plan.layout.base_windows)}"))
        clips.append(pipeline.decode(latent)[0])
        write_mp4(os.path.join(args.output_dir, plan.isolated[p]), clips[-1], args.sampling_fps)
    write_mp4(os.path.join(args.output_dir, plan.isolated[-1]), torch.cat(clips), args.sampling_fps)


def check_prompts(args, prompts, counts):
    """Mask-guided runs name the object's tokens in every source (ref) and target (cur) prompt."""
    if "KVSharingMaskGuidedAdaLNMixin" in args.adaln_mixin_names:
        check_token_indices(counts, [("ref_token_idx", list(args.ref_token_idx), range(len(prompts) - 1)),
                                     ("cur_token_idx", list(args.cur_token_idx), range(1, len(prompts)))])


def main(argv=None):
    with user_errors():
        cfg, prompts, plan, pipeline = start_run(argv, plan_outputs, check_prompts)
        args = cfg.args
    layout = plan.layout
    with torch.no_grad():
        embeds = pipeline.encode(prompts)
        cond = window_conditions(layout, embeds)
        uncond = torch.zeros_like(cond)
        network = cfg.model.network_config.params
        noise = long_noise(layout, args.latent_channels, network.latent_height, network.latent_width, args.seed)
        if args.is_run_isolated:
            seed_everything(args.seed)
            isolated_baseline(pipeline, plan, cond, uncond, noise, args)
        for name, file_name in plan.long_videos.items():
            seed_everything(args.seed)
            pipeline.dit.set_controller(build_controller(name, args, args.output_dir))
            denoiser = MultiPromptDenoiser(pipeline.guided(), layout, cond, uncond,
                                            share_work=args.share_unshared_work)
            description = (f"{name}: {len(prompts)} prompts, {layout.num_windows} windows, "
                           f"{max(layout.num_windows - 1, 1)} window pairs/step")
            latent = sample_dpmpp_2m_sde(denoiser, noise.clone().to(pipeline.device), pipeline.schedule,
                                         full_noise_discarding_first, progress_bar(description))
            path = write_mp4(os.path.join(args.output_dir, file_name), pipeline.decode(latent)[0], args.sampling_fps)
            print(f"wrote {path}")


if __name__ == "__main__":
    guarded(main)
