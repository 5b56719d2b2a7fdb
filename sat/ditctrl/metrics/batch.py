"""The batch comparison: every case of a prompt set with DiTCtrl and the isolated baseline, scored and tabulated.

    prepare_batch -> run_share (per rank: generate its cases, then score them) -> collect (results.csv, .md, .png)

Cases are dealt to ranks whole (`distributed.deal`, contiguous blocks); ranks never communicate. Each case runs as
its own process (`case_runs.generate`) and its record, `<out>/cases/<case>/case.json` (status, one-line reason,
scores), is written by the rank that ran it; `collect` reads the records of this batch run (`run_id`) alone, so a
results table never mixes in a stale record. A case is skipped when its videos and params.yaml are complete and
its resolved config is unchanged (`case_runs.is_complete`); its scores are reused when its params.yaml, videos
and the metric settings are unchanged. Every progress line is one line per case.
"""
import json
import os
import time
from dataclasses import dataclass

from ..distributed import Ranks, deal
from ..errors import write_internal_log
from ..output_files import first_line, write_text
from .case_runs import CaseRun, case_run, fingerprint, generate, is_complete, resolve, scored_videos
from .command_line import write_json
from .prompt_parts import parts_from_params
from .results_tables import csv_rows, displayed_summary, metric_titles, results_markdown, write_csv
from .video_inputs import read_checked

CASE_EXTENSIONS = (".yaml", ".yml")
RUN_ID_VARIABLE = "DITCTRL_BATCH_RUN_ID"
HEADING = "DiTCtrl against the isolated baseline"


@dataclass(frozen=True)
class Batch:
    out: str
    runs: tuple          # CaseRun per case, in order
    settings: dict       # what the scores depend on besides the videos: CLIP, AMT-S, crop size
    clip_batch: int
    amt_batch: int

    def case_folder(self, run: CaseRun) -> str:
        return os.path.join(self.out, "cases", run.name)

    def record_path(self, run: CaseRun) -> str:
        return os.path.join(self.case_folder(run), "case.json")


def case_files(inputs) -> list[str]:
    """The case files named: files as they are, folders' *.yaml / *.yml files in name order."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += [os.path.join(path, name) for name in sorted(os.listdir(path)) if name.endswith(CASE_EXTENSIONS)]
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"case file or folder not found: {path}")
    if not files:
        raise ValueError(f"no case files (*.yaml) in {', '.join(inputs)}")
    return files


def prepare_batch(inputs, out: str, model: str, tiny: bool, overrides, settings: dict, clip_batch: int,
                  amt_batch: int) -> tuple:
    """(Batch, {case name: (cfg, plan)}): every case's config resolved and checked before any model work."""
    runs, resolved = [], {}
    for case_file in case_files(inputs):
        run = case_run(case_file, out, model, tiny, overrides)
        if run.name in resolved:
            raise ValueError(f"two cases are named {run.name} ({case_file} and another); their outputs would share "
                             f"{run.output_dir}: rename one")
        try:
            resolved[run.name] = resolve(run)
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"{case_file}: {first_line(error)}") from None
        runs.append(run)
    return Batch(os.path.abspath(out), tuple(runs), settings, clip_batch, amt_batch), resolved


def batch_run_id() -> str:
    """This batch run's id, shared with the ranks it starts (through the environment)."""
    return os.environ.setdefault(RUN_ID_VARIABLE, f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")


def _say(ranks: Ranks, text: str) -> None:
    print(f"[rank {ranks.rank}] {text}" if ranks.size > 1 else text, flush=True)


def rank_gpu(ranks: Ranks) -> str | None:
    """The GPU a rank's cases run on (CUDA_VISIBLE_DEVICES for them): the LOCAL_RANK-th visible one."""
    if ranks.size == 1:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[ranks.local_rank] if visible else str(ranks.local_rank)


def generate_share(batch: Batch, resolved: dict, ranks: Ranks) -> dict:
    """Generate this rank's cases; {case name: (status, reason)}, each announced in one line."""
    mine = deal(len(batch.runs), ranks.size)[ranks.rank]
    outcome = {}
    for index in mine:
        run = batch.runs[index]
        tag = f"[{index + 1}/{len(batch.runs)}] {run.name}"
        if is_complete(run, *resolved[run.name]):
            outcome[run.name] = ("skipped", "its videos and params.yaml are complete and its config is unchanged")
            _say(ranks, f"{tag}: skipped ({outcome[run.name][1]})")
            continue
        os.makedirs(batch.case_folder(run), exist_ok=True)
        log = os.path.join(batch.case_folder(run), "generation.log")
        _say(ranks, f"{tag}: generating (log: {log})")
        started = time.monotonic()
        reason = generate(run, log, rank_gpu(ranks))
        outcome[run.name] = ("done", None) if reason is None else ("failed", reason)
        _say(ranks, f"{tag}: failed: {reason}" if reason else f"{tag}: done in {time.monotonic() - started:.0f} s")
    return outcome


def _video_entry(batch: Batch, method: str, path: str, scores) -> dict:
    return {"method": method, "video": os.path.relpath(path, batch.out), "frames": scores.frames,
            "cscv": scores.cscv, "motion_smoothness": scores.motion_smoothness, "text_similarity": scores.text.video,
            "text_similarity_per_prompt": list(scores.text.per_prompt), "similarities": list(scores.similarities)}


def score_case(batch: Batch, run: CaseRun, resolved, models) -> list:
    """Every scored video's entry (see `_video_entry`), with the similarity curve written beside the record."""
    from .plots import similarity_figure
    from .video_scores import score_video

    entries, curves, long_parts = [], [], None
    for method, path in scored_videos(run, *resolved):
        frames = read_checked(path).frames
        parts = parts_from_params(path, len(frames))
        scores = score_video(models, frames, parts, f"{run.name} {method}")
        entries.append(_video_entry(batch, method, path, scores))
        curves.append((f"{method} (CSCV {100 * scores.cscv:.2f})", scores.similarities))
        long_parts = long_parts or parts
    similarity_figure(curves, long_parts, os.path.join(batch.case_folder(run), "similarity.png"))
    return entries


def _read_record(path: str) -> dict:
    """A case's record; {} when there is none or it does not read (the case is then scored again)."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError):
        return {}


def _reusable_videos(batch: Batch, run: CaseRun, key: str) -> list | None:
    record = _read_record(batch.record_path(run))
    same = record.get("fingerprint") == key and record.get("settings") == batch.settings and record.get("videos")
    return record["videos"] if same else None


def score_share(batch: Batch, resolved: dict, ranks: Ranks, outcome: dict, load_models, run_id: str) -> None:
    """Score this rank's generated cases (reusing unchanged scores) and write each case's record."""
    models = None
    for index in deal(len(batch.runs), ranks.size)[ranks.rank]:
        run = batch.runs[index]
        status, reason = outcome[run.name]
        record = {"case": run.name, "case_file": run.case_file, "transition": run.transition, "run_id": run_id,
                  "status": status, "reason": reason, "settings": batch.settings, "videos": []}
        tag = f"[{index + 1}/{len(batch.runs)}] {run.name}"
        if status != "failed":
            started = time.monotonic()
            try:
                key = fingerprint(run, scored_videos(run, *resolved[run.name]))
                record["fingerprint"] = key
                record["videos"] = _reusable_videos(batch, run, key)
                if record["videos"] is None:
                    models = models or load_models()
                    record["videos"] = score_case(batch, run, resolved[run.name], models)
                    _say(ranks, f"{tag}: scored {len(record['videos'])} videos in {time.monotonic() - started:.0f} s")
                else:
                    _say(ranks, f"{tag}: scores reused (videos, params.yaml and metric settings unchanged)")
            except (ValueError, FileNotFoundError) as error:
                record.update(status="failed", reason=f"scoring: {first_line(error)}", videos=[])
            except Exception as error:  # noqa: BLE001 - one case's fault must not stop the others
                where = write_internal_log(error)
                record.update(status="failed", videos=[], reason=f"scoring: internal error ({type(error).__name__}: "
                                                                 f"{first_line(error)}); full log: {where}")
            if record["status"] == "failed":
                _say(ranks, f"{tag}: failed: {record['reason']}")
        os.makedirs(batch.case_folder(run), exist_ok=True)
        write_json(batch.record_path(run), record)


def run_share(batch: Batch, resolved: dict, ranks: Ranks, load_models, run_id: str) -> None:
    """This rank's part of the batch: generate its cases, then score them (the metric models are loaded only when
    a case needs scoring, after every generation of the rank, so they never share the GPU with one)."""
    outcome = generate_share(batch, resolved, ranks)
    score_share(batch, resolved, ranks, outcome, load_models, run_id)


def read_records(batch: Batch, run_id: str) -> list:
    """Every case's record of this batch run; a case without one failed (its rank stopped before it)."""
    records = []
    for run in batch.runs:
        record = _read_record(batch.record_path(run))
        if record.get("run_id") != run_id:
            record = {"case": run.name, "transition": run.transition, "status": "failed", "videos": [],
                      "reason": "no record from this batch run (its rank stopped before the case ended)"}
        records.append(record)
    return records


def collect(batch: Batch, run_id: str) -> int:
    """Write results.csv, results.md and results.png from this run's records; the number of failed cases."""
    from .plots import comparison_figure

    records = read_records(batch, run_id)
    rows = csv_rows(records)
    written = [write_csv(os.path.join(batch.out, "results.csv"), rows)]
    markdown = results_markdown(records, rows, HEADING)
    written.append(write_text(os.path.join(batch.out, "results.md"), markdown))
    if rows:
        figure = os.path.join(batch.out, "results.png")
        written.append(comparison_figure(displayed_summary(rows), metric_titles(), figure))
    failed = sum(record["status"] == "failed" for record in records)
    print("\n" + markdown)
    print("wrote " + ", ".join(written))
    print(f"{failed} of {len(records)} case(s) failed" if failed else f"all {len(records)} case(s) scored")
    return failed
