"""The metrics section of the benchmark (`python sat/benchmark.py --metrics`): how fast the video metrics score the
rose case at CogVideoX's size, on the CPU and, when there is one, on a CUDA GPU.

Videos: rose's long video (145 frames) and its isolated clips (3 x 49 frames), 480 x 720, synthetic (a slow pan
over a smooth random picture). Models: the real-size CLIP ViT-B/32 (transformers' default CLIPConfig) and AMT-S,
both with random weights (the speed does not depend on the values). Measured:

  clip     CLIP features of every frame (the CSCV, the similarity curve and the image side of text similarity, in
           batches of 32) and the text similarity of each video's prompts (random 77-token prompts);
  motion   VBench's motion smoothness with AMT-S (pairs in batches of 4); on the CPU the first AMT_CPU_FRAMES frames of
           each video only (a pair takes seconds there), on CUDA every frame.

Each is reported as seconds per 100 scored frames and peak memory: on the CPU the peak RSS of a fresh process
that made the videos and ran the metric alone (and that peak less the process's RSS before the model was built),
on CUDA max_memory_allocated.
"""
import multiprocessing
import resource
import time

import torch

from ditctrl.metrics.amt import AMTS
from ditctrl.metrics.clip_features import frame_features, project_images
from ditctrl.metrics.cscv import cscv_score
from ditctrl.metrics.motion_smoothness import motion_smoothness
from ditctrl.metrics.prompt_parts import clip_sequence_parts, long_video_parts
from ditctrl.metrics.text_similarity import text_similarity
from ditctrl.segment_layout import segment_layout

HEIGHT, WIDTH = 480, 720
PROMPTS, CLIP_FRAMES = 3, 49
ROSE_LAYOUT = segment_layout(PROMPTS, 13, 9, 2)  # 145 frames
AMT_CPU_FRAMES = 9
PAN_PIXELS_PER_FRAME = 2
MIB = 2**20


def panning_video(frames: int, seed: int) -> torch.Tensor:
    """(frames, 480, 720, 3) uint8: a camera panning over a smooth random picture, PAN_PIXELS_PER_FRAME a frame."""
    generator = torch.Generator().manual_seed(seed)
    width = WIDTH + PAN_PIXELS_PER_FRAME * frames
    coarse = torch.rand(1, 3, HEIGHT // 40, width // 40 + 1, generator=generator)
    picture = torch.nn.functional.interpolate(coarse, size=(HEIGHT, width), mode="bicubic", align_corners=False)
    picture = (picture.clamp(0, 1)[0].permute(1, 2, 0) * 255).to(torch.uint8)
    return torch.stack([picture[:, PAN_PIXELS_PER_FRAME * f:PAN_PIXELS_PER_FRAME * f + WIDTH] for f in range(frames)])


def rose_videos() -> list:
    """(name, frames, prompt parts): the long video and the isolated clips."""
    videos = [("rose", panning_video(ROSE_LAYOUT.video_frames, 0),
               long_video_parts(ROSE_LAYOUT, [f"prompt {p}" for p in range(PROMPTS)]))]
    return videos + [(f"isolated {p}", panning_video(CLIP_FRAMES, p + 1),
                      clip_sequence_parts([f"prompt {p}"], CLIP_FRAMES)) for p in range(PROMPTS)]


def _clip_metrics(device: str, videos: list) -> int:
    from transformers import CLIPConfig, CLIPModel

    clip = CLIPModel(CLIPConfig()).eval().to(device)  # ViT-B/32, 224 px, 77 text tokens
    tokens = torch.randint(0, clip.config.text_config.vocab_size, (PROMPTS, 77),
                           generator=torch.Generator().manual_seed(0))
    scored = 0
    with torch.no_grad():
        for _, frames, parts in videos:
            pooled = frame_features(clip, frames, 224)
            cscv_score(pooled.numpy())
            pooled_text = clip.text_model(input_ids=tokens[:len(parts.prompts)].to(device)).pooler_output
            texts = clip.text_projection(pooled_text)
            text_similarity(project_images(clip, pooled), texts.float().cpu(), parts)
            scored += len(frames)
    return scored


def _motion_metric(device: str, videos: list) -> int:
    model = AMTS().eval().to(device)
    scored = 0
    for _, frames, _ in videos:
        frames = frames if device.startswith("cuda") else frames[:AMT_CPU_FRAMES]
        motion_smoothness(model, frames)
        scored += len(frames)
    return scored


SECTIONS = {"clip": _clip_metrics, "motion": _motion_metric}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(section: str, device: str) -> dict:
    """Time one section on `device` in this process: seconds per 100 frames and peak memory."""
    videos = rose_videos()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _peak_rss_mib()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    frames = SECTIONS[section](device, videos)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    result = {"frames": frames, "seconds": seconds, "seconds_per_100_frames": 100 * seconds / frames}
    if device.startswith("cuda"):
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    else:
        result.update(peak_rss_mib=_peak_rss_mib(), peak_rss_above_videos_mib=_peak_rss_mib() - rss_before)
    return result


def _measure_in_child(section: str, device: str, queue) -> None:
    queue.put(measure(section, device))


def measure_fresh(section: str, device: str) -> dict:
    """`measure` in a fresh process (the CPU's peak RSS cannot be reset)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_measure_in_child, args=(section, device, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def metrics_benchmark() -> tuple[dict, list]:
    """Every section on the CPU and, when available, CUDA: (results, printed lines)."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results, lines = {}, []
    for device in devices:
        for section in SECTIONS:
            print(f"benchmarking metrics {section} on {device} ...", flush=True)
            found = measure(section, device) if device == "cuda" else measure_fresh(section, device)
            results.setdefault(device, {})[section] = found
            memory = (f"peak {found['peak_memory_mib']:.0f} MiB" if device == "cuda" else
                      f"peak RSS {found['peak_rss_mib']:.0f} MiB ({found['peak_rss_above_videos_mib']:.0f} above the "
                      "videos)")
            lines.append(f"metrics  {section:<7} {device:<5} {found['seconds_per_100_frames']:8.2f} s/100 frames "
                         f"({found['frames']} frames in {found['seconds']:.1f} s), {memory}")
    return results, lines
