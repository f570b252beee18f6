"""Bench results as tables: the metric columns, one row per case, the summary (means, counts,
failures by reason), results.csv / results.md / summary.json and the lines the command prints."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...utils.atomic import atomic_write
from ...utils.records import format_number, write_record

__all__ = ["columns_for", "failure_text", "md_cell", "record_values", "result_lines", "summarize_records",
           "table_rows", "write_tables"]


def columns_for(metrics: Sequence[str], people_names: Sequence[str], kind: str) -> list[str]:
    columns = []
    if "interactivity" in metrics:
        columns += ["interactivity"] + [f"interactivity_{name}" for name in people_names]
    if "sync" in metrics:
        columns += ["sync_c", "sync_d"] + (["sync_c_star"] if kind == "interactiveeyes" else [])
    if "identity" in metrics:
        columns += ["id_vs_first", "id_vs_reference"]
    return columns


def record_values(record: dict) -> dict:
    """The numeric columns of one case record."""
    values = {}
    metrics = record.get("metrics", {})
    inter = metrics.get("interactivity")
    if inter:
        values["interactivity"] = inter.get("score")
        for person in inter.get("people", []):
            values[f"interactivity_{person['name']}"] = person.get("score")
    sync = metrics.get("sync")
    if sync:
        values.update(sync_c=sync.get("sync_c"), sync_d=sync.get("sync_d"), sync_c_star=sync.get("sync_c_star"))
    ident = metrics.get("identity")
    if ident:
        values.update(id_vs_first=ident.get("vs_first"), id_vs_reference=ident.get("vs_reference"))
    return values


def failure_text(record: dict, with_message: bool = False) -> str:
    parts = []
    for failure in record.get("failures", []):
        label = f"{failure['metric']}: {failure['reason']}" if failure.get("metric") else \
            f"{record.get('stage', 'input')}: {failure['reason']}"
        parts.append(label + (f" ({failure['message']})" if with_message and failure.get("message") else ""))
    return "; ".join(parts)


def table_rows(records: Sequence[dict], columns: Sequence[str]) -> list[dict]:
    rows = []
    for record in records:
        values = record_values(record)
        rows.append({"case": record["case"], "status": record["status"], **{c: values.get(c) for c in columns},
                     "frames": record.get("frames"), "fps": record.get("fps"),
                     "failure": failure_text(record), "message": " | ".join(
                         f.get("message") or "" for f in record.get("failures", []))})
    return rows


def summarize_records(records: Sequence[dict], columns: Sequence[str]) -> dict:
    failures: dict[str, int] = {}
    for record in records:
        for failure in record.get("failures", []):
            key = f"{failure['metric'] or record.get('stage')}:{failure['reason']}"
            failures[key] = failures.get(key, 0) + 1
    means, counts = {}, {}
    for column in columns:
        values = [v for v in (record_values(r).get(column) for r in records) if v is not None]
        counts[column] = len(values)
        means[column] = float(np.mean(values)) if values else None
    return {
        "cases": len(records),
        "scored": sum(r["status"] == "ok" for r in records),
        "failed": sum(r["status"] != "ok" for r in records),
        "failures": dict(sorted(failures.items())),
        "failed_cases": {r["case"]: failure_text(r, with_message=True) for r in records if r["status"] != "ok"},
        "means": means,
        "counts": counts,
    }


def md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_tables(out: Path, records: Sequence[dict], columns: Sequence[str], summary: dict, header: dict) -> None:
    """OUT/results.csv (per-case rows), OUT/results.md (per-case rows, mean and count rows, failures)
    and OUT/summary.json; all written atomically."""
    rows = table_rows(records, columns)
    fields = ["case", "status", *columns, "frames", "fps", "failure", "message"]
    with atomic_write(out / "results.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v)
                             for k, v in row.items()})

    shown = ["case", "status", *columns, "failure"]
    lines = [f"# {header['title']}", ""]
    lines += [f"- {key}: {value}" for key, value in header["details"].items()]
    lines += ["", "| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(md_cell(format_number(row[c])) if c in columns else md_cell(row[c] or "")
                                       for c in shown) + " |")
    lines.append("| **mean** | | " + " | ".join(format_number(summary["means"][c]) for c in columns) + " | |")
    lines.append("| n | | " + " | ".join(str(summary["counts"][c]) for c in columns) + " | |")
    lines += ["", (f"Means are over the cases that have a value (row n). {summary['scored']} of {summary['cases']} "
                   f"cases scored on every metric; {summary['failed']} failed.")]
    if summary["failures"]:
        lines += ["", "Failures by reason: " + ", ".join(f"{k} {v}" for k, v in summary["failures"].items()), ""]
        lines += [f"- {md_cell(case)}: {md_cell(text)}" for case, text in summary["failed_cases"].items()]
    with atomic_write(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_record(out / "summary.json", {**header["details"], **summary})


def result_lines(records: Sequence[dict], columns: Sequence[str], summary: dict) -> list[str]:
    """What the command prints: one line per case (its values and status), then the means."""
    lines = []
    for record in records:
        values = record_values(record)
        shown = "  ".join(f"{c} {format_number(values.get(c))}" for c in columns if values.get(c) is not None)
        status = "ok" if record["status"] == "ok" else f"FAILED {failure_text(record)}"
        lines.append(f"{record['case']}: {shown}{'  ' if shown else ''}{status}")
    means = "  ".join(f"{c} {format_number(summary['means'][c])} (n={summary['counts'][c]})" for c in columns)
    failures = f" ({', '.join(f'{k} {v}' for k, v in summary['failures'].items())})" if summary["failures"] else ""
    lines.append(f"mean: {means}; scored {summary['scored']} of {summary['cases']}, failed {summary['failed']}"
                 + failures)
    return lines
