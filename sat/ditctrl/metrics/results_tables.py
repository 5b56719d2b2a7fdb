"""The batch run's results: results.csv (one row per video and metric) and results.md (a Table-1-style summary:
method x metric, mean ± std over the cases, count; then the same by kind of transition)."""
import csv
import io
import statistics

from ..output_files import write_text

METRICS = (("cscv", "CSCV"), ("motion_smoothness", "Motion smoothness"), ("text_similarity", "Text similarity"))
PERCENT = {"cscv", "motion_smoothness"}  # shown x 100 in results.md, as Table 1 reads them
CSV_COLUMNS = ("case", "transition", "method", "video", "metric", "value")


def csv_rows(records: list) -> list:
    """One row per scored video and metric, from the cases' records (see `batch.case_record`)."""
    return [{"case": record["case"], "transition": record["transition"], "method": video["method"],
             "video": video["video"], "metric": metric, "value": video[metric]}
            for record in records for video in record.get("videos", ()) for metric, _ in METRICS]


def write_csv(path: str, rows: list) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "value": repr(float(row["value"]))} for row in rows)
    return write_text(path, text.getvalue())


def summarise(rows: list, key=lambda row: row["method"]) -> dict:
    """summary[metric][group] = (mean, population std, count) over the rows' values, groups in first-seen order."""
    values = {}
    for row in rows:
        values.setdefault(row["metric"], {}).setdefault(key(row), []).append(float(row["value"]))
    return {metric: {group: (statistics.fmean(found), statistics.pstdev(found), len(found))
                     for group, found in groups.items()} for metric, groups in values.items()}


def metric_titles() -> list:
    """(metric, title with its unit) in table order."""
    return [(metric, title + (" (×100)" if metric in PERCENT else "")) for metric, title in METRICS]


def displayed_summary(rows: list) -> dict:
    """`summarise` by method, CSCV and motion smoothness x 100 (mean and std), as the tables show them."""
    return {metric: {method: (mean * 100, std * 100, count) if metric in PERCENT else (mean, std, count)
                     for method, (mean, std, count) in groups.items()}
            for metric, groups in summarise(rows).items()}


def _cell(statistic) -> str:
    return "—" if statistic is None else f"{statistic[0]:.2f} ± {statistic[1]:.2f}"


def summary_table(summary: dict) -> str:
    """`summary`: `displayed_summary`'s."""
    methods = list(dict.fromkeys(method for groups in summary.values() for method in groups))
    lines = ["| method | " + " | ".join(title for _, title in metric_titles()) + " | videos |",
             "|---" * (len(METRICS) + 2) + "|"]
    for method in methods:
        cells = [_cell(summary.get(metric, {}).get(method)) for metric, _ in METRICS]
        count = max(summary[metric][method][2] for metric, _ in METRICS if method in summary.get(metric, {}))
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {count} |")
    return "\n".join(lines)


def transition_table(rows: list) -> str:
    """CSCV (x 100, mean over the cases) per kind of transition and method."""
    cscv = [row for row in rows if row["metric"] == "cscv"]
    by_kind = summarise(cscv, key=lambda row: (row["transition"], row["method"])).get("cscv", {})
    methods = list(dict.fromkeys(method for _, method in by_kind))
    kinds = sorted({kind for kind, _ in by_kind})
    lines = ["| transition | cases | " + " | ".join(methods) + " |", "|---" * (len(methods) + 2) + "|"]
    for kind in kinds:
        cases = max(count for (found, _), (_, _, count) in by_kind.items() if found == kind)
        cells = [f"{100 * by_kind[(kind, method)][0]:.2f}" if (kind, method) in by_kind else "—" for method in methods]
        lines.append(f"| {kind} | {cases} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(records: list, rows: list, heading: str) -> str:
    failed = [record for record in records if record["status"] == "failed"]
    parts = [f"# {heading}", "",
             f"{len(records) - len(failed)} of {len(records)} cases scored. Mean ± std (population) over the cases; "
             "CSCV and motion smoothness × 100, as the paper's Table 1 reads them (× 100 is our reading for CSCV); "
             "text similarity is CLIP cosine × 100 (docs/metrics.md).", "",
             summary_table(displayed_summary(rows)), "", "## CSCV by kind of transition (× 100)", "",
             transition_table(rows)]
    if failed:
        parts += ["", "## Failed cases", ""] + [f"- {record['case']}: {record['reason']}" for record in failed]
    return "\n".join(parts) + "\n"
