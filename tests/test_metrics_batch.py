"""The batch comparison end to end on the tiny model (2 sampler steps, 25-frame videos): every case generated with
DiTCtrl and the isolated baseline and scored; a failed case recorded without stopping the others and counted in the
exit status; a rerun skips finished cases and reruns changed or half-done ones; two ranks give the results of one
process (both runs with one CPU thread per process: on a CPU, torch's sums may depend on the thread count); bad
input is one line before any case runs."""
import csv
import os
import shutil
import subprocess

import pytest
import torch

from amt_reference import seeded_weights
from metric_scripts import no_model_work, one_line_error, script
from tiny_clip import save_tiny_clip
from ditctrl.metrics.amt import AMTS
from ditctrl.metrics.clip_features import frame_features, load_clip
from ditctrl.metrics.cscv import cscv_score
from ditctrl.metrics.prompt_parts import parts_from_params
from ditctrl.metrics.text_similarity import video_text_similarity
from ditctrl.video_io import read_video
from repo_paths import REPO

FAST = ["model.sampler_config.params.num_steps=2", "args.start_step=1"]
TINY_CASE = """# transition: {kind}
args:
  seed: {seed}
  sampling_num_frames: 3
  overlap_size: 1
  num_transition_blocks: 1
  prompts:
    - "A red boat on a calm lake under a clear sky."
    - "A red boat on a rough lake under a stormy sky."
"""
FAILING_CASE = """# transition: weather
args:
  adaln_mixin_names: [KVSharingMaskGuidedAdaLNMixin]
  ref_token_idx: [60]
  sampling_num_frames: 3
  overlap_size: 1
  num_transition_blocks: 1
  prompts: ["A boat.", "A ship."]
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    amt = folder / "amt-s.pth"
    torch.save({"state_dict": seeded_weights(AMTS(), 0)}, amt)
    return ["--extractor_path", save_tiny_clip(str(folder / "clip")), "--amt_path", str(amt)]


def write_cases(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny_a.yaml").write_text(TINY_CASE.format(kind="weather", seed=5))
    (folder / "tiny_b.yaml").write_text(TINY_CASE.format(kind="lighting", seed=6))
    (folder / "bad.yaml").write_text(FAILING_CASE)
    return folder


def batch(cases, out, models, *extra):
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment.pop("DITCTRL_BATCH_RUN_ID", None)
    return subprocess.run(["bash", "metrics/run_benchmark.sh", str(cases), "--tiny", "--out", str(out), "--device",
                           "cpu", *models, *FAST, *extra], cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=environment)


def rows(out):
    with open(out / "results.csv") as file:
        return list(csv.DictReader(file))


def lines_of(result, case):
    return [line.split(f"] {case}: ", 1)[1] for line in result.stdout.splitlines() if f"] {case}: " in line]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("batch")
    cases = write_cases(root / "cases")
    return cases, root / "out", batch(cases, root / "out", models)


def test_every_case_is_scored_and_a_failed_one_is_counted(first_run, models):
    cases, out, result = first_run
    assert result.returncode == 1, result.stderr[-2000:]  # one failed case
    assert lines_of(result, "bad")[-1].startswith("failed: error: args.ref_token_idx = 60 is outside prompt 0")
    assert lines_of(result, "tiny_a")[-1].startswith("scored 2 videos")
    table = rows(out)
    assert [(r["case"], r["transition"], r["method"], r["metric"]) for r in table] == [
        (case, kind, method, metric) for case, kind in (("tiny_a", "weather"), ("tiny_b", "lighting"))
        for method in ("DiTCtrl", "Isolated") for metric in ("cscv", "motion_smoothness", "text_similarity")]
    clip, tokenizer = load_clip(models[1], "cpu")
    for row in table:
        video = str(out / row["video"])
        frames = read_video(video).frames
        pooled = frame_features(clip, frames, 224)
        if row["metric"] == "cscv":
            assert float(row["value"]) == pytest.approx(cscv_score(pooled.numpy()), abs=1e-6)
        if row["metric"] == "text_similarity":
            expected = video_text_similarity(clip, tokenizer, pooled, parts_from_params(video, len(frames))).video
            assert float(row["value"]) == pytest.approx(expected, abs=1e-4)
    markdown = (out / "results.md").read_text()
    ditctrl_cscv = [float(r["value"]) for r in table if r["method"] == "DiTCtrl" and r["metric"] == "cscv"]
    assert f"| DiTCtrl | {100 * sum(ditctrl_cscv) / 2:.2f} ± " in markdown and "- bad: error: args.ref_token_idx" in markdown
    assert (out / "results.png").is_file() and (out / "cases" / "tiny_a" / "similarity.png").is_file()


def test_a_rerun_skips_finished_cases_and_reruns_changed_or_half_done_ones(first_run, models, tmp_path):
    cases, out, _ = first_run
    cases, out = shutil.copytree(cases, tmp_path / "cases"), shutil.copytree(out, tmp_path / "out")
    again = batch(cases, out, models)
    assert again.returncode == 1
    for case in ("tiny_a", "tiny_b"):
        assert lines_of(again, case) == ["skipped (its videos and params.yaml are complete and its config is "
                                         "unchanged)", "scores reused (videos, params.yaml and metric settings unchanged)"]
    assert rows(out) == rows(first_run[1])
    (cases / "tiny_b.yaml").write_text(TINY_CASE.format(kind="lighting", seed=7))  # changed
    os.remove(out / "videos" / "tiny_a" / "isolated" / "all_frames18.mp4")      # half done
    changed = batch(cases, out, models)
    for case in ("tiny_a", "tiny_b"):
        assert lines_of(changed, case)[0].startswith("generating") and lines_of(changed, case)[2].startswith("scored")
    new, old = rows(out), rows(first_run[1])
    assert [r["value"] for r in new[:6]] == [r["value"] for r in old[:6]]  # tiny_a: the same run again
    assert [r["value"] for r in new[6:]] != [r["value"] for r in old[6:]]  # tiny_b: another seed


def test_two_ranks_equal_one_process(first_run, models, tmp_path):
    cases, out, _ = first_run
    result = batch(cases, tmp_path / "out", models, "--gpus", "2")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "[rank 0] [1/3] bad: generating" in result.stdout and "[rank 1] [3/3] tiny_b: generating" in result.stdout
    assert rows(tmp_path / "out") == rows(out)
    for video in ("tiny_a/MultiPrompt_frames25.mp4", "tiny_b/isolated/all_frames18.mp4"):
        assert (tmp_path / "out" / "videos" / video).read_bytes() == (out / "videos" / video).read_bytes()


def test_bad_batch_input_is_one_line_before_any_case_runs(tmp_path, models, monkeypatch, capsys):
    import re

    no_model_work(monkeypatch)
    monkeypatch.setattr("ditctrl.metrics.case_runs.generate", lambda *a, **k: pytest.fail("a case ran"))
    monkeypatch.delenv("DITCTRL_BATCH_RUN_ID", raising=False)
    cases = write_cases(tmp_path / "cases")
    (tmp_path / "more").mkdir()
    shutil.copy(cases / "tiny_a.yaml", tmp_path / "more" / "tiny_a.yaml")
    (tmp_path / "typo").mkdir()
    (tmp_path / "typo" / "c.yaml").write_text("args:\n  seeed: 3\n  prompts: [a, b]\n")
    out = ["--out", str(tmp_path / "out"), "--tiny"]
    main = script("batch_benchmark").main
    for arguments, expected in [
        ([str(cases), str(tmp_path / "more"), *out, *models], "two cases are named tiny_a"),
        ([str(tmp_path / "typo"), *out, *models], "c.yaml: unknown key 'seeed' .* did you mean 'seed'"),
        ([str(tmp_path / "nothing"), *out, *models], "case file or folder not found"),
        ([str(cases), *out, "--extractor_path", str(tmp_path / "x"), *models[2:]], "CLIP weights"),
        ([str(cases), *out, *models[:2], "--amt_path", str(tmp_path / "x.pth")], "AMT-S weights not found"),
        ([str(cases), *out, *models, "--gpus", "0"], "--gpus and --amt_batch_size must be >= 1"),
    ]:
        assert re.search(expected, one_line_error(capsys, main, arguments)), arguments
    assert not (tmp_path / "out").exists()


def test_the_prompt_sets_pass_the_config_checks_and_name_their_kind_of_transition(tmp_path):
    from collections import Counter

    from ditctrl.metrics.batch import prepare_batch

    folder = os.path.join(REPO, "inference_case_configs", "prompt_sets")
    prepared, resolved = prepare_batch([folder], str(tmp_path), "2b", True, [], {}, 32, 4)
    kinds = Counter(run.transition for run in prepared.runs)
    assert len(prepared.runs) >= 30 and len(kinds) >= 8 and "unspecified" not in kinds
    for run in prepared.runs:
        _, plan = resolved[run.name]
        assert 2 <= len(plan.prompts) <= 3 and plan.isolated  # multi-prompt, with the isolated baseline
