"""Speed and memory benchmark of the DiTCtrl pipeline on synthetic (random-weight) CogVideoX checkpoints.

    python sat/benchmark.py                         # CogVideoX-2B size on CUDA, fp16, 50 steps
    python sat/benchmark.py --steps 5 --repeats 3   # quicker: 50-step totals are extrapolated (and say so)
    python sat/benchmark.py --tiny                  # the tiny CPU config (the default without CUDA)
    python sat/benchmark.py --model 5b              # CogVideoX-5B size on CUDA, bf16
    python sat/benchmark.py --metrics               # the video metrics' speed (sat/metrics_benchmark.py)

Sections (each can be left out with --skip):
  forward      one DiT forward at batch 4 (13 latent frames, full latent grid and text length) with
               plain attention, KV-sharing on every layer and mask-guided KV-sharing on every layer:
               time, TFLOP/s and peak memory, and the mask-guided / KV-sharing ratios;
  rose         the rose case (3 prompts, 7 windows, 37 latent frames) with KV-sharing, with and without
               the shared per-window work: seconds per step, row-layer evaluations and FLOPs;
  single_clip  one 49-frame clip (batch 2 per forward): seconds per step;
  memory       peak memory of the pipeline's phases: T5 encode (then DiT load), sampling, VAE decode;
  ranks        the rose case's units of work and row-layers per rank and step with 2, 3 and 6 ranks, their
               imbalance and the speed-up they allow (a model from the unit counts, not a measurement);
  ranks_measured  (CPU only) the rose sampling's wall-clock time with 2 gloo ranks over 1 process, both
               spawned here, each using half / all of torch's threads (noisy: a ratio, not a speed).
Every run also prints the full-size FLOPs of one batch-4 forward of CogVideoX-2B and -5B (no timing).
The synthetic checkpoints are written on first use and reused. Prints a short table and writes
everything, with the settings, as JSON to --out. Random weights make noise videos, but every kernel
runs at the real model's shapes.

    python sat/benchmark.py --gpu-check --steps 3 --repeats 2   # the quick check of sat/gpu_check.sh

--gpu-check writes no checkpoint: random weights are made directly on the device (T5: 2 of the 24
t5-v1_1-xxl blocks at full width). Sections, each reported even when another fails: encode (T5, then the
DiT), forward on every SDPA backend the device offers (the fastest plain forward wins), rose, and the
decode of one 13-latent-frame window; then the peak memory of encode, sampling and decode.
"""
import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from benchmarking.flops import DiTSize, forward_flops, run_flops  # noqa: E402
from benchmarking.kernel_profile import profile_device_time  # noqa: E402
from benchmarking.work_counts import rank_work, row_layer_count  # noqa: E402
from ditctrl.attention import AttentionController, ControlSchedule, KVSharing, MaskGuidedKVSharing  # noqa: E402
from ditctrl.attention.kernels import BACKENDS, available_backends, pinned_backend  # noqa: E402
from ditctrl.checkpoints import read_transformer_state_dict, transformer_file  # noqa: E402
from ditctrl.config import CONFIG_DIR, load_config, resolve_device, tiny_config_for  # noqa: E402
from ditctrl.console import say  # noqa: E402
from ditctrl.distributed import Ranks, distributed_run  # noqa: E402
from ditctrl.dit import DiffusionTransformer  # noqa: E402
from ditctrl.errors import guarded  # noqa: E402
from ditctrl.generation import encode_prompt_sets, load_sampling_models, sample_clip, sample_long  # noqa: E402
from ditctrl.multi_prompt import long_noise  # noqa: E402
from ditctrl.output_files import write_text  # noqa: E402
from ditctrl.pipeline import Pipeline, build_transformer, run_dtype  # noqa: E402
from ditctrl.weights import weight_paths  # noqa: E402
from ditctrl.segment_layout import segment_layout, video_frames  # noqa: E402
from ditctrl.synthetic_checkpoint import FULL_T5, build_random, write_t5_folder, write_transformer_checkpoint  # noqa: E402
from ditctrl.synthetic_folders import ensure_synthetic_checkpoints  # noqa: E402
from ditctrl.vae import CogVideoXVAE  # noqa: E402

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROSE_CASE = os.path.join(REPO_DIR, "inference_case_configs", "multi_prompts", "rose.yaml")
SECTIONS = ("forward", "rose", "single_clip", "memory", "ranks", "ranks_measured")
RANK_COUNTS = (2, 3, 6)
GPU_CHECK_SECTIONS = ("forward", "rose", "decode", "memory", "profile", "forward_compiled", "rose_compiled")
FULL_STEPS = 50  # the sampler's step count in every shipped config
FULL_CHECKPOINT_DIR = "CogVideoX-{model}-synthetic"  # resolved from sat/, like the real CogVideoX-2b-sat/
MODELS = ("2b", "5b")


def model_config(model: str) -> str:
    return os.path.join(CONFIG_DIR, f"cogvideox_{model}.yaml")


def full_size_flops() -> tuple[dict, list]:
    """FLOPs of one batch-4, 13-latent-frame forward of each full-size model (matrix products only)."""
    results, lines = {}, []
    for model in MODELS:
        size = DiTSize.from_network_params(load_config([model_config(model)], require_prompts=False)
                                           .model.network_config.params)
        tflop = forward_flops(size, 13, FORWARD_BATCH) / 1e12
        results[model] = {"tflop_per_forward": tflop, "layers": size.num_layers, "hidden_size": size.hidden_size,
                          "tokens": size.sequence_length(13), "batch": FORWARD_BATCH}
        lines.append(f"flops    CogVideoX-{model.upper()} batch-{FORWARD_BATCH} forward, {size.num_layers} layers x "
                     f"{size.hidden_size}, {size.sequence_length(13)} tokens: {tflop:.1f} TFLOP")
    return results, lines
FORWARD_BATCH = 4  # (u_source, u_target, c_source, c_target)
MAX_BATCH_WINDOWS = 2
TIME_TARGET, MEMORY_TARGET = 1.3, 1.2  # mask-guided / KV-sharing forward
LOAD_RSS_TARGET = 1.3  # peak host RSS / checkpoint file size when loading the transformer on the CPU
GIB = 2**30


class Clock:
    """Synchronised wall time and peak memory on one device.

    CUDA: `max_memory_allocated` since the phase began. CPU: the process's peak RSS, which cannot
    be reset, so a CPU phase reports the peak of everything up to its end.
    """

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self.memory_metric = ("CUDA max_memory_allocated during the phase" if self.cuda
                              else "CPU peak RSS of the whole process up to the phase's end (cannot be reset)")

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def peak_gib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / GIB
        return peak_rss_bytes() / GIB

    @contextmanager
    def phase(self):
        """Yields a dict that receives `seconds`, `peak_gib` and (CUDA only) `above_start_gib` when the block ends."""
        record = {}
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            start_gib = torch.cuda.memory_allocated(self.device) / GIB
        start = self.now()
        yield record
        record["seconds"] = self.now() - start
        record["peak_gib"] = self.peak_gib()
        if self.cuda:
            record["above_start_gib"] = record["peak_gib"] - start_gib

    def step_timer(self, seconds: list):
        """A sampler `progress` wrapper that appends each step's synchronised wall time to `seconds`."""
        def progress(steps):
            for step in steps:
                start = self.now()
                yield step
                seconds.append(self.now() - start)
        return progress


def step_times(seconds: list, work_measured: int, work_full: int) -> dict:
    """Per-step times, their total, and the 50-step total, scaled by the DiT work when fewer steps ran."""
    measured = len(seconds) == FULL_STEPS
    return {"seconds_per_step": statistics.mean(seconds), "seconds_per_step_all": seconds,
            "seconds_measured": sum(seconds),
            "seconds_50_steps": sum(seconds) * (1 if measured else work_full / work_measured),
            "seconds_50_steps_source": "measured" if measured else
            f"extrapolated from {len(seconds)} measured steps in proportion to the DiT work (row-layers)"}


def step_line(section: str, name: str, result: dict) -> str:
    source = "" if result["seconds_50_steps_source"] == "measured" else " (extrapolated)"
    return (f"{section:<8} {name:<12} {result['seconds_per_step']:9.3f} s/step   "
            f"50 steps {result['seconds_50_steps']:9.1f} s{source}")


def ratio(a, b):
    return None if a is None or b is None else a / b


def format_ratio(value) -> str:
    return "n/a on CPU" if value is None else f"{value:.2f}x"


class Benchmark:
    """The rose case's pipeline, loaded once (T5 encode, then the DiT), and the sections that sample it."""

    def __init__(self, cfg, device: str, repeats: int, pipeline_type=Pipeline):
        self.cfg, self.args, self.repeats = cfg, cfg.args, repeats
        self.clock = Clock(torch.device(device))
        self.size = DiTSize.from_network_params(cfg.model.network_config.params)
        self.prompts = list(cfg.args.prompts)
        self.layout = segment_layout(len(self.prompts), self.args.sampling_num_frames, self.args.overlap_size,
                                     self.args.num_transition_blocks, self.args.longer_mid_segment)
        self.kv_schedule = ControlSchedule.from_args(self.args)
        with self.clock.phase() as encode:
            self.pipeline = pipeline_type(cfg, device)
            self.embeds, = encode_prompt_sets(self.pipeline, [self.prompts])  # (P, L, D)
            load_sampling_models(self.pipeline)
        self.encode_phase, self.dit = encode, self.pipeline.dit
        self.rose_runs = {}  # share_work -> the sampled run, shared by the rose and memory sections

    def noise(self) -> torch.Tensor:
        """(1, L, C, H, W) initial noise of the rose case's long latent, on the CPU."""
        return long_noise(self.layout, self.args.latent_channels, self.size.latent_height, self.size.latent_width,
                          self.args.seed)

    def forward_inputs(self) -> tuple:
        """latents (4, T, C, H, W), timesteps (4,), context (4, L, D) of the forward section, on the device."""
        size, device = self.size, self.clock.device
        generator = torch.Generator(device).manual_seed(0)
        latents = torch.randn(FORWARD_BATCH, self.layout.tile, size.in_channels, size.latent_height,
                              size.latent_width, generator=generator, device=device)
        context = torch.randn(FORWARD_BATCH, size.text_length, size.text_hidden_size, generator=generator,
                              device=device)
        return latents, torch.full((FORWARD_BATCH,), 500.0, device=device), context

    def forward(self, plain_only: bool = False) -> tuple[dict, list]:
        """Section 1: one batch-4 DiT forward per controller (or plain attention only), median of the repeats after
        one warm-up."""
        size, tile = self.size, self.layout.tile
        latents, timesteps, context = self.forward_inputs()
        every_layer = ControlSchedule(frozenset({0}), frozenset(range(size.num_layers)))
        controllers = {
            "plain": AttentionController(),
            "kv_sharing": KVSharing(every_layer),
            "mask_guided": MaskGuidedKVSharing(every_layer, self.args.thres, self.args.ref_token_idx,
                                               self.args.cur_token_idx),
        }
        if plain_only:
            controllers = {"plain": controllers["plain"]}
        flops = forward_flops(size, tile, FORWARD_BATCH)
        results, lines = {}, []
        for name, controller in controllers.items():
            self.dit.set_controller(controller)
            seconds, memory = self._time_forward(latents, timesteps, context)
            ms = 1000 * statistics.median(seconds)
            results[name] = {"ms_per_forward": ms, "ms_all": [1000 * s for s in seconds],
                             "tflop_per_s": flops / (ms / 1000) / 1e12, "peak_gib": memory["peak_gib"],
                             "activation_gib": memory.get("above_start_gib")}
            lines.append(f"forward  {name:<12} {ms:9.1f} ms   {results[name]['tflop_per_s']:9.3g} TFLOP/s   "
                         f"peak {memory['peak_gib']:.2f} GiB")
        self.dit.set_controller(AttentionController())
        settings = {"batch": FORWARD_BATCH, "latent_frames": tile, "tokens": size.sequence_length(tile),
                    "latent_grid": [size.latent_height, size.latent_width], "text_length": size.text_length,
                    "warmup": 1,
                    "repeats": self.repeats, "controlled": "step 0, every layer (KV-sharing and mask-guided)",
                    "kv_sharing_kernel": "one batched SDPA call over the 4 rows, targets with their source's K/V",
                    "tflop_per_forward": flops / 1e12,
                    "tflop_per_s_note": "the plain forward's FLOPs divided by each controller's time"}
        if plain_only:
            return {"settings": settings, **results}, lines
        mask, kv = results["mask_guided"], results["kv_sharing"]
        comparison = {"time_ratio": mask["ms_per_forward"] / kv["ms_per_forward"], "time_target": TIME_TARGET,
                      "peak_memory_ratio": ratio(mask["peak_gib"], kv["peak_gib"]) if self.clock.cuda else None,
                      "activation_memory_ratio": ratio(mask["activation_gib"], kv["activation_gib"]),
                      "memory_target": MEMORY_TARGET}
        lines.append(f"forward  mask-guided / KV-sharing: time {comparison['time_ratio']:.2f}x (target <= "
                     f"{TIME_TARGET}), peak memory {format_ratio(comparison['peak_memory_ratio'])}, memory above "
                     f"the inputs {format_ratio(comparison['activation_memory_ratio'])} (target <= {MEMORY_TARGET})")
        return {"settings": settings, **results, "mask_guided_vs_kv_sharing": comparison}, lines

    def _time_forward(self, latents, timesteps, context) -> tuple[list, dict]:
        """One warm-up forward, then `repeats` timed ones (step 0, pair 0): their seconds and memory phase."""
        self.dit(latents, timesteps, context, step=0, pair=0)
        seconds = []
        with self.clock.phase() as memory:
            for _ in range(self.repeats):
                start = self.clock.now()
                self.dit(latents, timesteps, context, step=0, pair=0)
                seconds.append(self.clock.now() - start)
        return seconds, memory

    def rose_run(self, share_work: bool) -> dict:
        """The rose case sampled with KV-sharing's default schedule, as sample_video.py does (cached)."""
        if share_work not in self.rose_runs:
            seconds = []
            with self.clock.phase() as sampling:
                latent = self.sample_rose(share_work, self.clock.step_timer(seconds))
            self.rose_runs[share_work] = {"latent": latent, "seconds": seconds, "sampling": sampling}
        return self.rose_runs[share_work]

    def sample_rose(self, share_work: bool, progress, ranks: Ranks = Ranks()) -> torch.Tensor:
        """The rose case's final latent with KV-sharing's schedule, its steps shared by `ranks`."""
        torch.manual_seed(self.args.seed)
        latent = sample_long(self.pipeline, self.layout, self.embeds, KVSharing(self.kv_schedule), self.noise(),
                             share_work, MAX_BATCH_WINDOWS, progress, ranks)
        self.dit.set_controller(AttentionController())
        return latent

    def rose(self) -> tuple[dict, list]:
        """Section 2: seconds per step and the run's DiT work, with and without the shared per-window work."""
        results, lines = {}, []
        for name, share_work in (("share_work", True), ("faithful", False)):
            seconds = self.rose_run(share_work)["seconds"]
            row_layers = self._rose_row_layers(len(seconds), share_work)
            row_layers_full = self._rose_row_layers(FULL_STEPS, share_work)
            results[name] = {**step_times(seconds, row_layers, row_layers_full),
                             "row_layers_measured": row_layers, "row_layers_50_steps": row_layers_full,
                             "pflop_50_steps": run_flops(self.size, self.layout.tile, row_layers_full) / 1e15}
            lines.append(step_line("rose", name, results[name])
                         + f"   {row_layers_full} row-layers, {results[name]['pflop_50_steps']:.3g} PFLOP")
        results["faithful_vs_shared_work"] = (results["faithful"]["row_layers_50_steps"]
                                              / results["share_work"]["row_layers_50_steps"])
        layout = self.layout
        settings = {"prompts": len(self.prompts), "tile": layout.tile, "overlap": layout.overlap,
                    "windows": layout.num_windows, "latent_frames": layout.length, "video_frames": layout.video_frames,
                    "controller": "KVSharing", "controlled_steps": sorted(self.kv_schedule.steps),
                    "controlled_layers": sorted(self.kv_schedule.layers), "max_batch_windows": MAX_BATCH_WINDOWS,
                    "steps_measured": self.pipeline.schedule.num_steps}
        return {"settings": settings, **results}, lines

    def _rose_row_layers(self, steps: int, share_work: bool) -> int:
        return row_layer_count(self.layout, steps, self.size.num_layers, self.kv_schedule.steps,
                               min(self.kv_schedule.layers), share_work)

    def single_clip(self) -> tuple[dict, list]:
        """Section 3: one 49-frame clip of the first prompt on its window's noise, plain attention, batch 2."""
        seconds = []
        torch.manual_seed(self.args.seed)
        sample_clip(self.pipeline, self.embeds[:1], AttentionController(), self.noise()[:, self.layout.window(0)],
                    self.clock.step_timer(seconds))
        result = step_times(seconds, len(seconds), FULL_STEPS)  # every step is the same work
        tile = self.layout.tile
        settings = {"latent_frames": tile, "video_frames": video_frames(tile), "rows_per_forward": 2,
                    "controller": "plain", "steps_measured": len(seconds)}
        return {"settings": settings, **result}, [step_line("single", "49 frames", result)]

    def memory(self) -> tuple[dict, list]:
        """Section 4: peak memory of each phase: encode (T5, then DiT load), rose sampling, VAE decode."""
        run = self.rose_run(share_work=True)
        with self.clock.phase() as decode:
            self.pipeline.decode(run["latent"])
        phases = {"t5_encode_then_dit_load": self.encode_phase["peak_gib"], "sampling": run["sampling"]["peak_gib"],
                  "vae_decode": decode["peak_gib"]}
        result = {"metric": self.clock.memory_metric, "phases_gib": phases, "max_gib": max(phases.values()),
                  "vae_decode_seconds": decode["seconds"],
                  "settings": {"case": "rose", "sampling": "KVSharing with share_work",
                               "decoded_latent_frames": self.layout.length,
                               "vae_chunked_decode": self.args.vae_chunked_decode, "offload": self.args.offload}}
        label = "GPU memory" if self.clock.cuda else "CPU peak RSS (process, cumulative)"
        lines = [f"memory   {label}: " + ", ".join(f"{phase} {gib:.2f} GiB" for phase, gib in phases.items())
                 + f"; max {result['max_gib']:.2f} GiB"]
        return result, lines


    def ranks(self) -> tuple[dict, list]:
        """Section 5: per rank count, each rank's units and row-layers per step kind, and the modelled speed-up:
        one process's row-layers over the sum, over the 50 steps, of each step's busiest rank."""
        steps = self.kv_schedule.steps & set(range(FULL_STEPS))
        kinds = {True: {"window_groups": FULL_STEPS - len(steps), "window_layers_and_pair_tails": len(steps)},
                 False: {"pairs": FULL_STEPS}}  # share_work -> step kind -> steps of that kind
        results, lines = {"model": "row-layers of the busiest rank per step; no communication, no fixed costs"}, []
        for size in RANK_COUNTS:
            work = rank_work(self.layout, size, self.size.num_layers, min(self.kv_schedule.layers), MAX_BATCH_WINDOWS)
            per_kind = {kind: {"per_rank": ranks, "imbalance": imbalance([r["row_layers"] for r in ranks])}
                        for kind, ranks in work.items()}
            speedups = {}
            for share_work, step_kinds in kinds.items():
                busiest = sum(n * max(r["row_layers"] for r in work[kind]) for kind, n in step_kinds.items())
                speedups["share_work" if share_work else "faithful"] = (self._rose_row_layers(FULL_STEPS, share_work)
                                                                        / busiest)
            results[f"ranks_{size}"] = {"per_step_kind": per_kind, "modelled_speedup": speedups}
            lines.append(f"ranks    {size} ranks: units per rank " + "; ".join(
                f"{kind} {[r['units'] for r in ranks['per_rank']]} (imbalance {ranks['imbalance']:.2f})"
                for kind, ranks in per_kind.items()))
            lines.append(f"ranks    {size} ranks: modelled speed-up {speedups['share_work']:.2f}x with work sharing "
                         f"(vs 1 process sharing), {speedups['faithful']:.2f}x faithful (vs 1 process faithful)")
        return results, lines

    def ranks_measured(self) -> tuple[dict, list]:
        """Section 6 (CPU): wall-clock seconds of the rose sampling with 1 process and with 2 gloo ranks."""
        if self.clock.cuda:
            return {"skipped": "measured on CPU only"}, ["ranks    measured ratio: CPU only (skipped)"]
        threads = torch.get_num_threads()
        seconds = {size: spawn_rose_ranks(self.cfg, size, max(1, threads // size)) for size in (1, 2)}
        result = {"seconds": {f"ranks_{size}": s for size, s in seconds.items()},
                  "ratio_2_to_1": seconds[2] / seconds[1],
                  "settings": {"threads_total": threads, "steps": self.pipeline.schedule.num_steps,
                               "share_work": True, "note": "noisy on shared cores: a ratio, not a speed"}}
        return result, [f"ranks    measured: rose sampling {seconds[1]:.2f} s with 1 process, {seconds[2]:.2f} s with "
                        f"2 gloo ranks: ratio {result['ratio_2_to_1']:.2f}"]


def imbalance(row_layers: list) -> float:
    """The busiest rank's work over the mean rank's (1 is perfect balance)."""
    return max(row_layers) / statistics.mean(row_layers)


def spawn_rose_ranks(cfg, size: int, threads: int) -> float:
    """Seconds of rank 0's rose sampling in `size` spawned processes (gloo, `threads` torch threads each)."""
    with tempfile.TemporaryDirectory() as folder:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        mp.start_processes(rose_rank, args=(size, port, threads, cfg, folder), nprocs=size, start_method="spawn")
        with open(os.path.join(folder, "seconds")) as file:
            return float(file.read())


def rose_rank(rank: int, size: int, port: int, threads: int, cfg, folder: str) -> None:
    """One spawned rank of `spawn_rose_ranks`: load the tiny pipeline, sample rose with work sharing, time it."""
    os.environ.update(WORLD_SIZE=str(size), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    with distributed_run() as ranks, torch.no_grad():
        bench = Benchmark(cfg, "cpu", repeats=1)
        start = time.perf_counter()
        bench.sample_rose(True, None, ranks)
        if ranks.is_main:
            with open(os.path.join(folder, "seconds"), "w") as file:
                file.write(str(time.perf_counter() - start))


GPU_CHECK_T5_BLOCKS = 2  # of t5-v1_1-xxl's 24, at full width, with the synthetic tokenizer's 1100-id vocabulary
GPU_CHECK_T5_VOCAB = 1100
DECODE_WINDOW_FRAMES = 13  # latent frames of one window: 49 video frames
PLAIN_ONLY_BACKENDS = ("efficient",)  # about 2x slower than cuDNN and Flash on an H100/H200: plain forward only
COMPILED_ROSE_MIN_GAIN = 0.05  # rose is timed with the compiled DiT only when it makes the forward this much faster
FULL_SIZE_MATH_NOTE = "math not timed at full size: it builds the 4 x heads x N x N scores (about 75 GB in fp16)"


def t5_block_bytes(dims: dict, dtype) -> int:
    """Weight bytes of one T5 v1.1 encoder block as loaded in `dtype`: q, k, v, o, the gated feed-forward's three
    matrices, two norms; in fp16 transformers keeps the feed-forward output projection `wo` in fp32."""
    inner, size = dims["num_heads"] * dims["d_kv"], torch.finfo(dtype).bits // 8
    wo_size = torch.finfo(torch.float32).bits // 8 if dtype == torch.float16 else size
    return ((4 * dims["d_model"] * inner + 2 * dims["d_model"] * dims["d_ff"] + 2 * dims["d_model"]) * size
            + dims["d_model"] * dims["d_ff"] * wo_size)


class RandomWeightPipeline(Pipeline):
    """The pipeline with random weights made directly on the device: no checkpoint file is written or read,
    except a small T5 folder (`gpu_check_t5`) in a temporary directory, deleted once the DiT is built."""

    def __init__(self, cfg, device: str):
        self.t5_dims = gpu_check_t5(cfg)
        self.t5_folder = tempfile.mkdtemp(prefix="ditctrl_t5_")
        dtype = run_dtype(cfg.args)
        write_t5_folder(self.t5_folder, **self.t5_dims, dtype=torch.float16 if dtype == torch.float32 else dtype,
                        device=device)
        cfg = OmegaConf.merge(cfg, {"model": {"conditioner_config": {"params": {"model_dir": self.t5_folder}}}})
        super().__init__(cfg, device)

    def load_vae(self) -> None:
        params = OmegaConf.to_container(self.cfg.model.first_stage_config.params)
        self.vae = build_random(CogVideoXVAE, params, "cpu" if self.offload else self.device, self.dtype, seed=1).eval()

    def load_dit(self) -> None:
        shutil.rmtree(self.t5_folder, ignore_errors=True)
        dit = build_random(DiffusionTransformer, {**self.network_params, "skip_init": True}, self.device, self.dtype,
                           seed=0)
        dit.get_mixin("pos_embed").reinit()
        self.dit = dit.eval().requires_grad_(False)


def gpu_check_t5(cfg) -> dict:
    """The tiny config's T5, or GPU_CHECK_T5_BLOCKS blocks of t5-v1_1-xxl at full width."""
    if "tiny_t5" in cfg.model:
        return OmegaConf.to_container(cfg.model.tiny_t5)
    return {**FULL_T5, "num_layers": GPU_CHECK_T5_BLOCKS, "vocab_size": GPU_CHECK_T5_VOCAB}


def encode_section(bench) -> tuple[dict, list]:
    """The encode phase the benchmark ran at start-up (T5 encode, then the DiT made on the device)."""
    phase, pipeline = bench.encode_phase, bench.pipeline
    dims = pipeline.t5_dims
    missing_blocks = FULL_T5["num_layers"] - dims["num_layers"] if dims["d_model"] == FULL_T5["d_model"] else 0
    extra_gib = missing_blocks * t5_block_bytes(dims, pipeline.dtype) / GIB
    result = {**phase, "t5": f"{dims['num_layers']} blocks, d_model {dims['d_model']}, random weights",
              "t5_xxl_extra_weights_gib": extra_gib,
              "note": f"the real t5-v1_1-xxl has {missing_blocks} more blocks: about {extra_gib:.1f} GiB more "
                      "weights while encoding (T5 is released before the DiT is built)"}
    return result, [f"encode   T5 ({result['t5']}) then DiT: {phase['seconds']:.1f} s, peak {phase['peak_gib']:.2f} "
                    f"GiB; the full T5-XXL adds about {extra_gib:.1f} GiB of weights"]


def forward_on_every_backend(bench, full_size: bool) -> tuple[dict, list]:
    """The forward section once per SDPA backend the device offers; the fastest plain forward wins."""
    size, pipeline = bench.size, bench.pipeline
    head_dim = size.hidden_size // bench.dit.mixins["adaln_layer"].num_heads
    offered = available_backends(bench.clock.device, pipeline.dtype, head_dim)
    results, lines, failed = {"offered": offered}, [], {}
    if full_size and "math" in offered:
        offered = [name for name in offered if name != "math"]
        results["math"] = FULL_SIZE_MATH_NOTE
        lines.append(f"forward  {FULL_SIZE_MATH_NOTE}")
    for name in offered:
        try:
            with pinned_backend(name):
                results[name], backend_lines = bench.forward(plain_only=name in PLAIN_ONLY_BACKENDS)
            lines += [f"[{name}] {line}" for line in backend_lines]
        except Exception as error:  # noqa: BLE001 - one backend failing must not hide the others
            failed[name] = f"{type(error).__name__}: {error}"
            lines.append(f"[{name}] forward FAILED: {failed[name]}")
            traceback.print_exc()
        finally:
            release_cached_memory(bench.clock)
    timed = [name for name in offered if name in results]
    if timed:
        results["winner"] = min(timed, key=lambda name: results[name]["plain"]["ms_per_forward"])
        lines.append(f"forward  fastest SDPA backend (plain forward): {results['winner']}")
    results["failed"] = failed
    return results, lines


def winning_backend(results: dict) -> str:
    """The fastest plain-forward SDPA backend of the forward section (which must have run)."""
    if "winner" not in results.get("forward", {}):
        raise RuntimeError("needs the forward section's fastest backend, and the forward section did not time one")
    return results["forward"]["winner"]


def compiled_forward_section(bench, results: dict) -> tuple[dict, list]:
    """The plain batch-4 forward with the blocks' element-wise steps compiled (`args.compile_dit`), on the fastest
    backend, against its eager time: the first call compiles (the warm-up), then `repeats` timed calls."""
    backend = winning_backend(results)
    eager_ms = results["forward"][backend]["plain"]["ms_per_forward"]
    latents, timesteps, context = bench.forward_inputs()
    bench.dit.compile_elementwise(True)
    try:
        with pinned_backend(backend):
            start = bench.clock.now()
            bench.dit(latents, timesteps, context, step=0, pair=0)
            first_call = bench.clock.now() - start
            seconds, memory = bench._time_forward(latents, timesteps, context)
    finally:
        bench.dit.compile_elementwise(False)
    ms = 1000 * statistics.median(seconds)
    flops = forward_flops(bench.size, bench.layout.tile, FORWARD_BATCH)
    result = {"backend": backend, "ms_per_forward": ms, "ms_all": [1000 * s for s in seconds],
              "tflop_per_s": flops / (ms / 1000) / 1e12, "eager_ms_per_forward": eager_ms,
              "speedup": eager_ms / ms, "compile_seconds": first_call - ms / 1000, "peak_gib": memory["peak_gib"],
              "settings": {"compiled": "torch.compile(dynamic=False, fullgraph=True) of the element-wise steps",
                           "warmup": "the first (compiling) call and one more", "repeats": bench.repeats}}
    return result, [f"forward  [{backend}] plain compiled {ms:9.1f} ms   {result['tflop_per_s']:9.3g} TFLOP/s   "
                    f"eager {eager_ms:.1f} ms: {result['speedup']:.3f}x; compiling took "
                    f"{result['compile_seconds']:.1f} s; peak {memory['peak_gib']:.2f} GiB"]


def profile_section(bench, results: dict) -> tuple[dict, list]:
    """One eager plain batch-4 forward on the fastest backend under torch.profiler: the shares of attention
    kernels, GEMMs and everything else in the device time, and the longest kernels."""
    backend = winning_backend(results)
    latents, timesteps, context = bench.forward_inputs()
    with pinned_backend(backend):
        result = profile_device_time(lambda: bench.dit(latents, timesteps, context, step=0, pair=0), bench.clock.cuda)
    shares = result["shares"]
    lines = [f"profile  [{backend}] eager plain forward, {result['measured']}: {result['total_ms']:.1f} ms; "
             + ", ".join(f"{kind} {share:.1%}" for kind, share in shares.items() if share is not None)]
    lines += [f"profile    {kernel['share']:6.1%} {kernel['ms']:8.2f} ms  {kernel['kind']:<9} {kernel['name'][:90]}"
              for kernel in result["top_kernels"]]
    return {"backend": backend, **result}, lines


def compiled_rose_section(bench, results: dict) -> tuple[dict, list]:
    """The rose case work-shared with the compiled DiT, when the compiled forward gained more than
    COMPILED_ROSE_MIN_GAIN: one run that compiles every batch shape the run meets, then one timed run."""
    speedup = results.get("forward_compiled", {}).get("speedup")
    if speedup is None or speedup < 1 + COMPILED_ROSE_MIN_GAIN:
        note = (f"not run: the compiled forward's speedup ({'none measured' if speedup is None else f'{speedup:.3f}x'})"
                f" is below {1 + COMPILED_ROSE_MIN_GAIN:.2f}x")
        return {"note": note}, [f"rose     compiled share_work {note}"]
    runs = []
    bench.dit.compile_elementwise(True)
    try:
        for _ in range(2):
            runs.append([])
            bench.sample_rose(True, bench.clock.step_timer(runs[-1]))
    finally:
        bench.dit.compile_elementwise(False)
    seconds = runs[1]
    result = step_times(seconds, bench._rose_row_layers(len(seconds), True), bench._rose_row_layers(FULL_STEPS, True))
    eager = bench.rose_run(share_work=True)["seconds"]
    result.update(first_run_seconds_with_compiling=sum(runs[0]), eager_seconds_per_step=statistics.mean(eager),
                  speedup=statistics.mean(eager) / result["seconds_per_step"])
    return result, [step_line("rose", "shared+comp", result)
                    + f"   {result['speedup']:.3f}x eager; the compiling run took {sum(runs[0]):.1f} s"]


def decode_window_section(bench) -> tuple[dict, list]:
    """One window (13 latent frames, 49 video frames) decoded by the pipeline, as the run's decode does."""
    size = bench.size
    latent = torch.randn(1, DECODE_WINDOW_FRAMES, size.in_channels, size.latent_height, size.latent_width,
                         generator=torch.Generator().manual_seed(0))
    with bench.clock.phase() as decode:
        frames = bench.pipeline.decode(latent)
    result = {**decode, "latent_frames": DECODE_WINDOW_FRAMES, "video_shape": list(frames.shape),
              "vae_chunked_decode": bench.args.vae_chunked_decode}
    return result, [f"decode   {DECODE_WINDOW_FRAMES} latent frames -> {tuple(frames.shape[1:4])}: "
                    f"{decode['seconds']:.1f} s, peak {decode['peak_gib']:.2f} GiB"]


def memory_summary(results: dict, bench) -> tuple[dict, list]:
    """Peak memory per phase from the sections that ran: encode, rose sampling (work-shared), decode."""
    phases = {"encode": results.get("encode", {}).get("peak_gib"),
              "sampling_rose": bench.rose_runs[True]["sampling"]["peak_gib"] if True in bench.rose_runs else None,
              "decode_window": results.get("decode", {}).get("peak_gib")}
    measured = [gib for gib in phases.values() if gib is not None]
    result = {"metric": bench.clock.memory_metric, "phases_gib": phases, "max_gib": max(measured, default=None)}
    shown = ", ".join(f"{phase} {gib:.2f} GiB" for phase, gib in phases.items() if gib is not None)
    return result, [f"memory   {shown}"]


def release_cached_memory(clock) -> None:
    if clock.cuda:
        torch.cuda.empty_cache()


def gpu_check(options) -> dict:
    """The quick check: random weights on the device, every section in its own try block, a summary at the end."""
    cfg = benchmark_config(options)
    results = {"settings": {
        "size": "tiny" if options.tiny else "full", "device": device_name(options.device), "dtype": options.dtype,
        "steps": options.steps, "repeats": options.repeats, "torch": torch.__version__,
        "attention_backend": cfg.args.attention_backend,
        "weights": "random, made directly on the device (no checkpoint files)", "model": options.model}}
    lines, failures = [], {}
    results["failures"], results["summary"] = failures, lines

    def section(name, call):
        if name in options.skip:
            return
        say(f"gpu-check {name} ...")
        try:
            results[name], section_lines = call()
            lines.extend(section_lines)
        except Exception as error:  # noqa: BLE001 - one failing section must not hide the others
            failures[name] = f"{type(error).__name__}: {error}"
            lines.append(f"{name:<8} FAILED: {failures[name]}")
            traceback.print_exc()
        release_cached_memory(bench.clock)
        write_text(options.out, json.dumps(results, indent=2))  # what ran so far survives a later timeout

    with torch.no_grad():
        try:
            bench = Benchmark(cfg, options.device, options.repeats, RandomWeightPipeline)
        except Exception as error:  # noqa: BLE001 - reported like a failed section
            bench, failures["encode"] = None, f"{type(error).__name__}: {error}"
            lines.append(f"encode   FAILED: {failures['encode']}")
            traceback.print_exc()
        if bench is not None:
            section("encode", lambda: encode_section(bench))
            section("forward", lambda: forward_on_every_backend(bench, not options.tiny))
            section("rose", bench.rose)
            section("decode", lambda: decode_window_section(bench))
            section("memory", lambda: memory_summary(results, bench))
            section("profile", lambda: profile_section(bench, results))
            section("forward_compiled", lambda: compiled_forward_section(bench, results))
            section("rose_compiled", lambda: compiled_rose_section(bench, results))
    write_text(options.out, json.dumps(results, indent=2))
    settings = results["settings"]
    say(f"\ngpu check: {settings['size']} size, {settings['device']}, {settings['dtype']}, "
        f"{settings['steps']} steps measured, {settings['repeats']} repeats")
    say("\n".join(lines))
    say(f"{len(failures)} section(s) failed: {sorted(failures)}" if failures else "all sections ran")
    say(f"wrote {options.out}")
    return results


def peak_rss_bytes() -> int:
    """This process's peak RSS: VmHWM on Linux (ru_maxrss would carry the parent's peak over fork and exec)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def load_transformer_on_cpu(folder: str, network: dict) -> dict:
    """Run in a fresh process: build the DiT on the CPU from `folder` in fp16 and read every weight once;
    seconds and peak RSS."""
    before = peak_rss_bytes()
    start = time.perf_counter()
    dit = build_transformer(network, read_transformer_state_dict(folder), "cpu", torch.float16)
    seconds = time.perf_counter() - start
    for p in dit.parameters():  # read every weight once, as the first forward does (mapped pages become resident)
        p.abs().max()
    return {"seconds": seconds, "seconds_with_first_read": time.perf_counter() - start, "peak_rss_before_bytes": before,
            "peak_rss_bytes": peak_rss_bytes(), "parameters": sum(p.numel() for p in dit.parameters())}


def load_check(options) -> dict:
    """Write (once) a full-size fp16 synthetic transformer checkpoint, load it on the CPU in a fresh process and
    report seconds and peak host RSS against the file size (target: at most LOAD_RSS_TARGET times the file)."""
    cfg = benchmark_config(options)
    network = OmegaConf.to_container(cfg.model.network_config.params)
    folder = weight_paths(cfg)["transformer"]
    if not os.path.isfile(os.path.join(folder, "latest")):
        say(f"writing a random-weight fp16 transformer checkpoint to {folder} (once; later runs reuse it)")
        dit = build_random(DiffusionTransformer, {**network, "skip_init": True}, "cpu", torch.float16, seed=0)
        write_transformer_checkpoint(dit.state_dict(), folder)
        del dit
    path = transformer_file(folder)
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # a fresh process: its peak RSS is the load's
        result = pool.apply(load_transformer_on_cpu, (folder, network))
    file_bytes = os.path.getsize(path)
    result.update(file=path, file_gib=file_bytes / GIB, peak_rss_gib=result["peak_rss_bytes"] / GIB,
                  peak_rss_over_file=result["peak_rss_bytes"] / file_bytes, target=LOAD_RSS_TARGET,
                  peak_rss_before_load_gib=result["peak_rss_before_bytes"] / GIB,
                  metric="peak RSS of the loading process (imports included)")
    say(f"load check: {result['parameters'] / 1e9:.2f} B parameters from a {result['file_gib']:.2f} GiB file in "
        f"{result['seconds']:.1f} s ({result['seconds_with_first_read']:.1f} s with every weight read once); peak RSS {result['peak_rss_gib']:.2f} GiB = {result['peak_rss_over_file']:.2f}x "
        f"the file (target <= {LOAD_RSS_TARGET}; {result['peak_rss_before_load_gib']:.2f} GiB before loading)")
    write_text(options.out, json.dumps({"load_check": result}, indent=2))
    return result


def parse_options(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", dest="tiny", action="store_true", default=None,
                      help="the tiny model (configs/cogvideox_tiny.yaml); the default without CUDA")
    size.add_argument("--full", dest="tiny", action="store_false", help="the model's full size; the default on CUDA")
    parser.add_argument("--model", choices=MODELS, default="2b", help="CogVideoX-2B or -5B (with --tiny: its tiny shape)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:<index>")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="default fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--checkpoint-dir", help="where the synthetic checkpoints are written once and reused "
                        f"(default: sat/{FULL_CHECKPOINT_DIR.format(model='<model>')} at full size, the tiny config's folder with --tiny)")
    parser.add_argument("--steps", type=int, default=FULL_STEPS,
                        help="sampling steps to time; with fewer than 50 the 50-step totals are extrapolated")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per controller (after one warm-up)")
    parser.add_argument("--attention-backend", default="auto", choices=sorted(BACKENDS),
                        help="SDPA backend of the plain attention calls (auto lets torch choose)")
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted({*SECTIONS, *GPU_CHECK_SECTIONS}),
                        help=f"sections to leave out: {', '.join(SECTIONS)}; with --gpu-check "
                             f"{', '.join(GPU_CHECK_SECTIONS)} (encode always runs)")
    parser.add_argument("--out", default="outputs/benchmark/benchmark.json", help="JSON result file")
    parser.add_argument("--load-check", action="store_true",
                        help="write (once) a full-size fp16 transformer checkpoint and load it on the CPU: seconds, "
                             "peak RSS vs the file size")
    parser.add_argument("--metrics", action="store_true",
                        help="score rose's videos (synthetic, 480x720) with CLIP ViT-B/32 and AMT-S: sat/metrics_benchmark.py")
    parser.add_argument("--gpu-check", action="store_true",
                        help="the quick check of sat/gpu_check.sh: random weights made on the device, no checkpoint")
    options = parser.parse_args(argv)
    if options.steps < 2:
        parser.error(f"--steps must be >= 2, got {options.steps}")
    if options.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {options.repeats}")
    try:
        options.device = resolve_device(options.device)
    except ValueError as error:
        parser.error(str(error).replace("args.device", "--device"))
    on_cuda = options.device.startswith("cuda")
    if options.tiny is None:
        options.tiny = not on_cuda and not options.load_check
    if not options.tiny and not on_cuda and not options.load_check:
        parser.error("--full needs a CUDA device (a full-size CPU run would take many hours); use --tiny")
    options.dtype = options.dtype or (("bf16" if options.model == "5b" else "fp16") if on_cuda else "fp32")
    return options


def benchmark_config(options):
    """The rose case on the chosen model size, dtype, step count and checkpoint folder."""
    overrides = [f"args.fp16={options.dtype == 'fp16'}", f"args.bf16={options.dtype == 'bf16'}",
                 f"args.attention_backend={options.attention_backend}",
                 f"model.sampler_config.params.num_steps={options.steps}"]
    if options.checkpoint_dir is not None:
        folder = os.path.abspath(options.checkpoint_dir)
    else:
        # None: the tiny config's own folder
        folder = None if options.tiny else FULL_CHECKPOINT_DIR.format(model=options.model)
    if folder is not None:
        overrides += [f"args.load={os.path.join(folder, 'transformer')}",
                      f"model.first_stage_config.ckpt_path={os.path.join(folder, 'vae', '3d-vae.pt')}",
                      f"model.conditioner_config.params.model_dir={os.path.join(folder, 't5-v1_1-xxl')}"]
    base = [model_config(options.model)]
    base += [tiny_config_for(base)] if options.tiny else []
    return load_config(base, ROSE_CASE, overrides)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} (torch threads: {torch.get_num_threads()})"


def main(argv=None) -> dict:
    """Run the sections not skipped; print the table, write the JSON and return the results."""
    options = parse_options(argv)
    if options.load_check:
        return load_check(options)
    if options.metrics:
        from metrics_benchmark import metrics_benchmark
        results, lines = metrics_benchmark()
        write_text(options.out, json.dumps({"metrics": results}, indent=2))
        print("\n".join(lines))
        return results
    if options.gpu_check:
        return gpu_check(options)
    cfg = benchmark_config(options)
    if options.checkpoint_dir is not None:  # named to hold them: made like --out's folder (the writer makes only
        os.makedirs(options.checkpoint_dir, exist_ok=True)  # the part folders inside it)
    ensure_synthetic_checkpoints(cfg, options.device)
    results = {"settings": {
        "size": "tiny" if options.tiny else "full", "device": device_name(options.device), "dtype": options.dtype,
        "steps": options.steps, "repeats": options.repeats, "torch": torch.__version__,
        "attention_backend": cfg.args.attention_backend, "weights": "synthetic (random)",
        "checkpoint_dir": os.path.dirname(weight_paths(cfg)["transformer"]), "model": options.model}}
    results["full_size_flops"], lines = full_size_flops()
    with torch.no_grad():
        bench = Benchmark(cfg, options.device, options.repeats)
        for section in SECTIONS:
            if section not in options.skip:
                say(f"benchmarking {section} ...")
                results[section], section_lines = getattr(bench, section)()
                lines += section_lines
    write_text(options.out, json.dumps(results, indent=2))
    settings = results["settings"]
    say(f"\n{settings['size']} size, {settings['device']}, {settings['dtype']}, {settings['steps']} steps")
    say("\n".join(lines))
    say(f"wrote {options.out}")
    return results


if __name__ == "__main__":
    guarded(main)
