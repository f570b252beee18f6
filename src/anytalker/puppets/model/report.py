"""The recipe's step 11: the results tables (OUT/results.md, the README's) and the summaries
shipped next to the exported model."""

from __future__ import annotations

from pathlib import Path

from ...utils.atomic import atomic_write, write_json_atomic
from ...utils.records import format_number

TABLE_COLUMNS = (("lip_own", "lip sync, own track (r)"), ("lip_other", "lip sync, other tracks (r)"),
                 ("binding", "binding"), ("interactivity", "Interactivity"),
                 ("amplitude_std_ratio", "mouth opening std / ground truth"),
                 ("amplitude_max_ratio", "mouth opening max / ground truth"),
                 ("flicker", "background flicker (0-255)"), ("flicker_ratio", "flicker / ground truth"))


def _table(rows: list[tuple[str, dict]]) -> list[str]:
    lines = ["| model | " + " | ".join(title for _, title in TABLE_COLUMNS) + " |",
             "|---|" + "---:|" * len(TABLE_COLUMNS)]
    for label, summary in rows:
        lines.append(f"| {label} | " + " | ".join(format_number(summary.get(key), 3) for key, _ in TABLE_COLUMNS)
                     + " |")
    return lines


def _label(name: str) -> str:
    return "ablation: " + name.replace("_", " ").replace("stage", "stage ")


def results_table(results: dict) -> str:
    """Markdown tables of a finished recipe's `evaluate`, `generalise` and `ablations` results."""
    main, ablations = results["evaluate"], results.get("ablations", {})
    lines = [f"Held-out two-puppet scenes ({main['stage2']['scenes']}, {main['stage2']['binding_moments']} "
             "one-speaker moments):", ""]
    rows = [("ground-truth renders", main["ground_truth"]), ("renders through the VAE", main["vae_reconstruction"]),
            ("puppets-tiny (stage 1 + stage 2)", main["stage2"]),
            ("its stage 1 alone (puppets-tiny-stage1)", main["stage1"])]
    for name, summary in ablations.items():
        rows.append((_label(name), summary["two"]))
        if "stage1" in summary:
            rows.append((f"{_label(name)}, its stage 1 alone", summary["stage1"]))
    lines += _table(rows)
    stage1, stage2, truth = (main[k]["interactivity"] for k in ("stage1", "stage2", "ground_truth"))
    if stage1 and stage2 and truth:
        lines += ["", f"Interactivity: stage 2 / stage 1 = {stage2 / stage1:.2f}x, stage 2 / ground truth = "
                      f"{stage2 / truth:.2f}"]
    if "generalise" in results:
        other = results["generalise"]
        lines += ["", f"Held-out {other['persons']}-puppet scenes ({other['stage2']['scenes']}; "
                      "training saw at most 2):", ""]
        lines += _table([("ground-truth renders", other["ground_truth"]), ("puppets-tiny", other["stage2"]),
                         ("its stage 1 alone", other["stage1"])]
                        + [(_label(name), summary["three"]) for name, summary in ablations.items()])
    return "\n".join(lines) + "\n"


def step_report(out: Path, results: dict) -> None:
    """OUT/results.md, and the summaries next to the exported model (puppets-tiny/evaluation.json)."""
    with atomic_write(out / "results.md") as tmp:
        tmp.write_text(results_table(results))
    summary = {key: results[key] for key in ("evaluate", "generalise", "ablations") if key in results}
    write_json_atomic(out / "puppets-tiny" / "evaluation.json", summary)
