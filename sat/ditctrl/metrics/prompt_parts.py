"""Which prompt each frame of a generated video belongs to, from the window layout its run's params.yaml describes.

A long video's prompt p owns the frames of its own windows: its base window and, for a middle prompt, the extra
windows of `longer_mid_segment` (the windows conditioned on prompt p alone). Transition windows (interpolated text)
belong to no prompt; adjacent parts share the frames where their windows overlap a transition's. Latent frame 0
decodes to video frame 0, latent frame l >= 1 to video frames 4l-3 .. 4l, so a window of latent frames
[s, s + T) covers video frames 4s-3 .. 4(s+T-1) (from 0 when s = 0).

The isolated baseline's concatenation `isolated/all_frames*.mp4` is its prompts' clips one after another (prompt p
owns clip p); an isolated clip `isolated/{p}_*.mp4` belongs wholly to its prompt.
"""
import os
from dataclasses import dataclass

from ..config import PARAMS_FILE, expand_prompts, load_config
from ..entry_points import ENTRY_POINTS, plan_run
from ..segment_layout import SegmentLayout, video_frames

LONG_ENTRY = ENTRY_POINTS["sample_video"]
ISOLATED_FOLDER = "isolated"


def window_frames(layout: SegmentLayout, w: int) -> range:
    """The video frames decoded from window w's latent frames."""
    start = layout.starts[w]
    return range(0 if start == 0 else 4 * start - 3, 4 * (start + layout.tile - 1) + 1)


@dataclass(frozen=True)
class PromptParts:
    prompts: tuple       # one per part, in order (a repeated single prompt appears once per repetition)
    frame_count: int
    members: tuple       # per prompt: the frame indices it owns, ascending
    transitions: tuple   # video-frame ranges of the transition windows

    def label(self, frame: int) -> int | None:
        """The prompt that alone owns `frame`; None for a frame of a transition window that no or two prompts own."""
        owners = [p for p, frames in enumerate(self.members) if frame in frames]
        return owners[0] if len(owners) == 1 else None


def long_video_parts(layout: SegmentLayout, prompts) -> PromptParts:
    members = []
    for p in range(len(prompts)):
        own = [w for w, condition in enumerate(layout.conditions) if condition.is_base and condition.first == p]
        members.append(tuple(sorted({frame for w in own for frame in window_frames(layout, w)})))
    transitions = tuple(window_frames(layout, w) for w, condition in enumerate(layout.conditions)
                        if not condition.is_base)
    return PromptParts(tuple(prompts), layout.video_frames, tuple(members), transitions)


def clip_sequence_parts(prompts, clip_frames: int) -> PromptParts:
    """Clips of `clip_frames` frames one after another, clip p for prompt p (one clip: the whole video)."""
    members = tuple(tuple(range(p * clip_frames, (p + 1) * clip_frames)) for p in range(len(prompts)))
    return PromptParts(tuple(prompts), clip_frames * len(prompts), members, ())


def params_file_of(video_path: str) -> str | None:
    """The params.yaml of the run that wrote `video_path`: beside it, or above its isolated/ folder."""
    folder = os.path.dirname(os.path.abspath(video_path))
    candidates = [folder] + ([os.path.dirname(folder)] if os.path.basename(folder) == ISOLATED_FOLDER else [])
    return next((os.path.join(c, PARAMS_FILE) for c in candidates if os.path.isfile(os.path.join(c, PARAMS_FILE))),
                None)


def _parts_of_planned_file(args, relative: str) -> PromptParts | None:
    prompts = expand_prompts(args)
    plan = plan_run(LONG_ENTRY, args, prompts)
    if relative in [files.together for files in plan.videos.values()]:
        return long_video_parts(plan.layout, prompts)
    clip_frames = video_frames(args.sampling_num_frames)
    if plan.isolated and relative == plan.isolated[-1]:
        return clip_sequence_parts(prompts, clip_frames)
    if relative in plan.isolated:
        return clip_sequence_parts([prompts[plan.isolated.index(relative)]], clip_frames)
    return None


def parts_from_params(video_path: str, frame_count: int) -> PromptParts | None:
    """The prompt parts of a video that a multi-prompt run wrote, from its params.yaml; None when no params.yaml
    describes the video. A params.yaml that names the video but not its length is a ValueError (one line)."""
    params = params_file_of(video_path)
    if params is None:
        return None
    cfg = load_config([params])
    relative = os.path.relpath(os.path.abspath(video_path), os.path.dirname(params)).replace(os.sep, "/")
    parts = _parts_of_planned_file(cfg.args, relative)
    if parts is not None and parts.frame_count != frame_count:
        raise ValueError(f"{params} does not match {video_path}: it describes {parts.frame_count} frames, the video "
                         f"has {frame_count}")
    return parts
