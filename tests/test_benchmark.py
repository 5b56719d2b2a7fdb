"""FLOP formulas against hand counts and torch's FLOP counter, and an end-to-end CPU run of sat/benchmark.py."""
import json

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

import benchmark
from benchmarking import kernel_profile
from benchmarking.flops import (DiTSize, attention_flops_per_layer, forward_flops, layer_flops, linear_flops_per_layer,
                               run_flops)
from benchmarking.work_counts import row_layer_count
from ditctrl.attention import kernels
from ditctrl.attention.kernels import set_backend
from ditctrl.config import MODEL_CONFIG
from ditctrl.segment_layout import segment_layout
from tiny_models import SMALL_DIT, small_dit

TERA, PETA = 1e12, 1e15
FULL = DiTSize.from_network_params(OmegaConf.load(MODEL_CONFIG).model.network_config.params)
ROSE = segment_layout(3, 13, 9, 2)
KV_STEPS, KV_FIRST_LAYER = range(2, 25), 25  # the default KV-sharing schedule


def test_hand_count_of_one_small_layer():
    # 3 tokens, d = 2: QKV 2·3·(2·6) + output 2·3·(2·2) + MLP 2·3·(2·8 + 8·2) = 72 + 24 + 192
    assert linear_flops_per_layer(tokens=3, hidden=2) == 288
    # QKᵀ and PV: 2 · (2·3·3·2)
    assert attention_flops_per_layer(tokens=3, hidden=2) == 72


def test_full_size_matches_the_spec():
    tokens = FULL.sequence_length(13)
    assert tokens == 17_776
    assert linear_flops_per_layer(1, 1920) == 88_473_600  # 88.47 MFLOP per token and layer
    linear = 30 * linear_flops_per_layer(tokens, 1920)
    attention = 30 * attention_flops_per_layer(tokens, 1920)
    assert linear / TERA == pytest.approx(47.2, abs=0.05)
    assert attention / TERA == pytest.approx(72.8, abs=0.05)
    per_row = forward_flops(FULL, 13)
    assert 0.005 < (per_row - linear - attention) / TERA < 0.02  # embeddings, adaLN, final layer: ~0.01 TFLOP
    assert per_row / TERA == pytest.approx(120.0, abs=0.1)
    assert forward_flops(FULL, 13, batch=4) == 4 * per_row


def test_formulas_equal_torch_flop_counter_on_a_small_dit():
    model = small_dit()
    frames, batch = 3, 2
    size = DiTSize.from_network_params(SMALL_DIT)
    latents = torch.randn(batch, frames, 16, SMALL_DIT["latent_height"], SMALL_DIT["latent_width"])
    context = torch.randn(batch, SMALL_DIT["text_length"], SMALL_DIT["text_hidden_size"])
    set_backend("math")  # the counter sees the math kernel's matmuls, not a fused CPU kernel
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(latents, torch.tensor([999.0, 500.0]), context)
    finally:
        set_backend("auto")
    assert counter.get_total_flops() == forward_flops(size, frames, batch)


def test_rose_run_flops_faithful_and_shared():
    faithful = row_layer_count(ROSE, 50, 30, KV_STEPS, KV_FIRST_LAYER, share_work=False)
    shared = row_layer_count(ROSE, 50, 30, KV_STEPS, KV_FIRST_LAYER, share_work=True)
    assert faithful == 1200 * 30  # 6 pairs · 4 rows · 50 steps · 30 layers (docs/performance.md, "FLOP counts")
    assert faithful / shared == pytest.approx(1.625, abs=1e-3)
    assert run_flops(FULL, 13, faithful) / PETA == pytest.approx(144, abs=0.1)  # 1200 rows · 120 TFLOP
    assert run_flops(FULL, 13, faithful) / run_flops(FULL, 13, shared) == pytest.approx(faithful / shared, rel=1e-9)
    assert run_flops(FULL, 13, faithful) == pytest.approx(1200 * forward_flops(FULL, 13), rel=1e-12)
    assert layer_flops(FULL, 13) * faithful < run_flops(FULL, 13, faithful)


@pytest.mark.parametrize("argv, message", [
    (["--tiny", "--steps", "1"], "--steps must be >= 2"),
    (["--full", "--device", "cpu"], "--full needs a CUDA device"),
    (["--tiny", "--skip", "everything"], "invalid choice"),
])
def test_bad_options_fail_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def positive(value) -> bool:
    return isinstance(value, float) and value > 0


@pytest.fixture
def one_thread():
    """Tiny matmuls gain nothing from a second thread, and on a busy 2-core machine OpenMP's second
    thread stalls every call (measured: 60 ms vs 5 s per tiny forward)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_cpu_run_writes_every_promised_number(tmp_path, one_thread, monkeypatch):
    monkeypatch.setattr(kernels, "_backend", kernels._backend)  # the run pins a process-wide backend; undo it after
    out = tmp_path / "result" / "benchmark.json"
    results = benchmark.main(["--tiny", "--device", "cpu", "--steps", "2", "--repeats", "1", "--attention-backend",
                              "math", "--checkpoint-dir", str(tmp_path / "weights"), "--out", str(out),
                              "--skip", "ranks_measured"])  # spawns processes; measured by hand (docs/performance.md)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert (tmp_path / "weights" / "transformer" / "latest").is_file()
    settings = results["settings"]
    assert (settings["size"], settings["dtype"], settings["steps"]) == ("tiny", "fp32", 2)
    assert settings["attention_backend"] == "math"

    forward = results["forward"]
    assert forward["settings"]["batch"] == 4 and forward["settings"]["tokens"] == 64 + 13 * 2 * 3
    for name in ("plain", "kv_sharing", "mask_guided"):
        assert all(positive(forward[name][key]) for key in ("ms_per_forward", "tflop_per_s", "peak_gib"))
    assert positive(forward["mask_guided_vs_kv_sharing"]["time_ratio"])

    rose = results["rose"]
    assert rose["settings"]["windows"] == 7 and rose["settings"]["latent_frames"] == 37
    assert rose["faithful_vs_shared_work"] == pytest.approx(1.625, abs=1e-3)
    for name, rows_per_step in (("share_work", 2 * 7), ("faithful", 4 * 6)):  # steps 0, 1 are uncontrolled
        run = rose[name]
        assert len(run["seconds_per_step_all"]) == 2 and all(s > 0 for s in run["seconds_per_step_all"])
        assert run["row_layers_measured"] == 2 * rows_per_step * 30
        assert run["seconds_50_steps"] == pytest.approx(
            run["seconds_measured"] * run["row_layers_50_steps"] / run["row_layers_measured"])
        assert run["seconds_50_steps_source"].startswith("extrapolated") and positive(run["pflop_50_steps"])

    single = results["single_clip"]
    assert single["settings"]["video_frames"] == 49
    assert single["seconds_50_steps"] == pytest.approx(25 * single["seconds_measured"])

    memory = results["memory"]
    assert "RSS" in memory["metric"]
    assert set(memory["phases_gib"]) == {"t5_encode_then_dit_load", "sampling", "vae_decode"}
    assert all(positive(gib) for gib in memory["phases_gib"].values())
    assert memory["max_gib"] == max(memory["phases_gib"].values())

    ranks = results["ranks"]  # rose: 36,000 faithful and 22,150 shared row-layers over 50 steps
    assert ranks["ranks_2"]["modelled_speedup"] == pytest.approx({"share_work": 22_150 / 13_610, "faithful": 2.0})
    assert ranks["ranks_6"]["modelled_speedup"] == pytest.approx({"share_work": 22_150 / 8_300, "faithful": 6.0})
    assert [r["units"] for r in ranks["ranks_3"]["per_step_kind"]["window_groups"]["per_rank"]] == [2, 1, 1]
    assert "ranks_measured" not in results


def test_tiny_gpu_check_on_the_cpu_reports_every_section(tmp_path, one_thread, monkeypatch):
    """The --gpu-check path (random weights made on the device, every SDPA backend offered, rose, one decoded
    window, memory) at the tiny size on the CPU: no section fails, the fastest plain forward wins, and the memory
    summary is the sections' own peaks."""
    monkeypatch.setattr(kernels, "_backend", kernels._backend)
    out = tmp_path / "gpu_check.json"
    results = benchmark.main(["--gpu-check", "--tiny", "--device", "cpu", "--steps", "2", "--repeats", "1",
                              "--out", str(out), "--skip", "profile", "forward_compiled", "rose_compiled"])
    assert results["failures"] == {}
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert (results["settings"]["size"], results["settings"]["model"]) == ("tiny", "2b")
    forward = results["forward"]
    timed = [name for name in forward["offered"] if name in forward]
    assert timed and forward["winner"] == min(timed, key=lambda name: forward[name]["plain"]["ms_per_forward"])
    assert len(results["rose"]["share_work"]["seconds_per_step_all"]) == 2
    phases = results["memory"]["phases_gib"]
    assert phases == {"encode": results["encode"]["peak_gib"], "decode_window": results["decode"]["peak_gib"],
                      "sampling_rose": phases["sampling_rose"]} and all(positive(gib) for gib in phases.values())


def test_kernel_time_shares_by_kind_on_real_kernel_names():
    """Kernel names as an H100/H200 profile shows them; the shares and the ranking counted by hand."""
    microseconds = {
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64_4x1x1_kernel0_0": 500.0,
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false>>(Flash_fwd_params)": 50.0,
        "fmha_cutlassF_f16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::half_t>::Params)": 50.0,
        "nvjet_hsh_256x128_64x4_2x1_v_bz_coopA_NNN": 200.0,
        "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel": 50.0,
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::Half, float>(int, float)": 100.0,
        "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>(int)": 30.0,
        "Memcpy DtoD (Device -> Device)": 20.0,
        "aten::addmm": 0.0,
    }
    report = kernel_profile.time_shares(microseconds)
    assert report["total_ms"] == pytest.approx(1.0)
    assert report["shares"] == pytest.approx({"attention": 0.6, "gemm": 0.25, "other": 0.15})
    top = report["top_kernels"]
    assert len(top) == kernel_profile.TOP_KERNELS
    assert [kernel["ms"] for kernel in top] == pytest.approx([0.5, 0.2, 0.1, 0.05, 0.05, 0.05, 0.03, 0.02])
    assert [kernel["kind"] for kernel in top[:3]] == ["attention", "gemm", "other"]
