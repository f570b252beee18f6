"""The benchmark runner behind `anytalker bench`: one model generates every case of a benchmark
folder, each video is scored, and the results become tables and plots.

- cases: benchmark folders (InteractiveEyes: speaker_duration.json + per-side audio + reference
  images; clips: single-person videos whose first frame is the reference) -> `Case`s.
- resume: when a kept video (its sidecar) or a kept metric record counts as this run's.
- evaluate: metric resources loaded up front and per-case scoring (Interactivity, Sync, identity).
- report: columns, rows, summary, results.csv / results.md / summary.json.
- plots: per-clip bars and per-case listening motion (needs matplotlib).
- settings: `BenchSettings` (validated) and the metrics a benchmark gets.
- run: `run_bench`, the whole run.
"""

from .cases import BENCHMARK_KINDS, BenchError, Case, benchmark_kind, find_cases, natural_key, select_cases
from .evaluate import MetricContext, evaluate_case, metric_context
from .plots import write_plots
from .report import columns_for, summarize_records, table_rows, write_tables
from .run import run_bench
from .settings import EMBEDDERS, METRICS, BenchSettings, metrics_for

__all__ = ["BENCHMARK_KINDS", "EMBEDDERS", "METRICS", "BenchError", "BenchSettings", "Case", "MetricContext",
           "benchmark_kind", "columns_for", "evaluate_case", "find_cases", "metric_context", "metrics_for",
           "natural_key", "run_bench", "select_cases", "summarize_records", "table_rows", "write_plots",
           "write_tables"]
