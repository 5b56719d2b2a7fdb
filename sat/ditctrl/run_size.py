"""How large a run will be, from its config alone, and whether this machine can hold it; checked before any model
work, and before any list of prompts or windows is built.

Every count that multiplies windows or frames is taken in closed form: the prompts (times `single_prompt_length`),
`num_transition_blocks` and `longer_mid_segment` give the windows, the windows times the stride
(`sampling_num_frames` - `overlap_size`) the latent frames, and these the decoded frames. Nothing caps them by
itself; what must fit is what grows with them:

* memory: the long latent's float32 copies alive while sampling, the per-window text conditions, the decoded video
  (in the run dtype and float32 on the device while it is turned into bytes, then its uint8 frames and their
  side-by-side copy on the host), all on the host for a CPU run. The estimate counts these buffers only (not the
  weights or the activations of one window), so it is a lower bound: a run it refuses cannot fit. It is compared with
  the host memory available now (MemAvailable) and, on a GPU, with the GPU's memory.
* files: every video, mask PNG and attention map the run writes, against the free inodes of the output's file
  system (where it counts them).
"""
import os
from dataclasses import dataclass

from .segment_layout import video_frames

LATENT_COPIES = 8  # long-latent-sized float32 tensors alive at once while sampling: x, the step's x0 and the previous
# one, two noise draws, the blender's sum and its normalised result, the update's product
DECODE_FLOAT32_COPIES = 2  # float32 copies of the decoded video next to the VAE's output while it becomes bytes
VISUALIZED_FILES = 7  # per (step, layer): the token panels PNG and the text, spatial and temporal maps (.npy + .png)
GIB = 2**30


@dataclass(frozen=True)
class RunSize:
    prompts: int        # after single_prompt_length
    windows: int        # of the long latent (1 for a clip)
    latent_frames: int  # of the long latent (a clip: one window)
    video_frames: int   # of each video
    frame_size: tuple   # (height, width) of a decoded frame
    host_bytes: int     # on the host (for a CPU run, everything)
    device_bytes: int   # on the GPU (0 for a CPU run)
    files: int          # every file the run writes, params.yaml included

    def describe(self) -> str:
        return (f"{self.prompts} prompt(s), {self.windows} window(s), {self.latent_frames} latent frames, "
                f"{self.video_frames} video frames of {self.frame_size[0]}x{self.frame_size[1]}")


def prompt_count(args) -> int:
    """The prompts of the run (`config.expand_prompts` builds them)."""
    return len(args.prompts) * (args.single_prompt_length if args.single_prompt_length > 0 else 1)


def window_count(prompts: int, num_transition_blocks: int, longer_mid_segment: int) -> int:
    """Windows of a long video (`segment_layout` lays them out): one per prompt, the middle ones 1 +
    longer_mid_segment, and num_transition_blocks between consecutive prompts."""
    return prompts + (prompts - 1) * num_transition_blocks + max(prompts - 2, 0) * longer_mid_segment


def long_latent_frames(windows: int, tile: int, overlap: int) -> int:
    """Latent frames of a long video of `windows` windows of `tile` frames, adjacent ones sharing `overlap`."""
    return (windows - 1) * max(tile - overlap, 0) + tile


def _indices_below(values, fallback: range, upper: int) -> int:
    """How many distinct indices of an explicit list (else of `fallback`) lie in [0, upper)."""
    return len({index for index in (fallback if values is None else values) if 0 <= index < upper})


def _file_count(entry, args, num_steps: int, num_layers: int, prompts: int, windows: int) -> int:
    names = list(args.adaln_mixin_names)
    roles = len(entry.prompt_roles) if entry.plan == "clip" and len(entry.prompt_roles) > 1 else 0
    files = len(names) * (1 + roles) + 1  # the videos and params.yaml
    if entry.plan == "long" and args.is_run_isolated:
        files += prompts + 1
    if "KVSharingMaskGuidedAdaLNMixin" in names and args.save_masks:
        pairs = 1 if entry.plan == "clip" else windows - 1
        steps = _indices_below(args.step_idx, range(args.start_step, args.end_step), num_steps)
        layers = _indices_below(args.layer_idx, range(args.start_layer, args.end_layer), num_layers)
        files += pairs * steps * layers * 2  # a source and a target mask each
    if "VisualizeAdaLNMixin" in names:
        maps = len({s for s in args.attn_map_step_idx if s < num_steps}) * len(
            {layer for layer in args.attn_map_layer_idx if layer < num_layers})
        files += maps * VISUALIZED_FILES + 1  # and the overview
    return files


def run_size(entry, cfg, on_gpu: bool) -> RunSize:
    """The size of a run of `entry` (entry_points.EntryPoint) with `cfg`, its buffers placed as on a GPU or a CPU."""
    args, model = cfg.args, cfg.model
    network, vae = model.network_config.params, model.first_stage_config.params
    prompts = prompt_count(args)
    value_bytes = 4 if not (args.fp16 or args.bf16) else 2
    if entry.plan == "long":
        windows = window_count(prompts, args.num_transition_blocks, args.longer_mid_segment)
        latent_frames = long_latent_frames(windows, args.sampling_num_frames, args.overlap_size)
        rows, conditions = 1, windows  # one long latent; a text condition per window
    else:
        windows, latent_frames, rows, conditions = 1, args.sampling_num_frames, prompts, prompts
    frames = video_frames(latent_frames)
    scale = 2 ** (len(vae.ch_mult) - 1)
    height, width = network.latent_height * scale, network.latent_width * scale
    latent = rows * latent_frames * args.latent_channels * network.latent_height * network.latent_width * 4
    text = 2 * conditions * network.text_length * network.text_hidden_size * value_bytes  # cond and uncond
    decoding = frames * 3 * height * width * (value_bytes + 4 * DECODE_FLOAT32_COPIES)  # one row at a time
    on_device = LATENT_COPIES * latent + text + decoding
    on_host = latent + 2 * rows * frames * height * width * 3  # the initial noise; uint8 frames, side by side
    files = _file_count(entry, args, model.sampler_config.params.num_steps, network.num_layers, prompts, windows)
    return RunSize(prompts, windows, latent_frames, frames, (height, width),
                   on_host + (0 if on_gpu else on_device), on_device if on_gpu else 0, files)


def available_host_bytes() -> int | None:
    """Memory the system can give this process now without swapping (Linux MemAvailable), else None (unknown)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_inodes(folder: str) -> int | None:
    """Files that can still be made on `folder`'s file system (its nearest existing folder's); None when the file
    system does not count them."""
    folder = os.path.abspath(folder)
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    stats = os.statvfs(folder)
    return stats.f_favail if stats.f_files else None


SHORTER = ("fewer prompts, or a smaller num_transition_blocks, longer_mid_segment, single_prompt_length or "
           "sampling_num_frames - overlap_size, make it smaller")


def gpu_memory(device: str) -> int | None:
    """The memory of the GPU `device` names; None for the CPU."""
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_properties(device).total_memory


def check_run_size(size: RunSize, output_dir: str, device: str) -> None:
    """Refuse a run whose buffers cannot fit the host memory available (or the memory of the GPU `device` names) or
    whose files cannot fit the output's file system; one line with the estimate and what it does not fit."""
    host, gpu_bytes = available_host_bytes(), gpu_memory(device)
    if host is not None and size.host_bytes > host:
        raise ValueError(f"the run needs at least {size.host_bytes / GIB:.1f} GiB of host memory ({size.describe()}), "
                         f"more than the {host / GIB:.1f} GiB available; {SHORTER}")
    if gpu_bytes is not None and size.device_bytes > gpu_bytes:
        raise ValueError(f"the run needs at least {size.device_bytes / GIB:.1f} GiB of GPU memory besides the models "
                         f"({size.describe()}), more than the GPU's {gpu_bytes / GIB:.1f} GiB; {SHORTER}")
    inodes = free_inodes(output_dir)
    if inodes is not None and size.files > inodes:
        raise ValueError(f"the run writes {size.files} files ({size.describe()}), more than the {inodes} its output "
                         f"file system ({output_dir}) can still hold; {SHORTER}")
