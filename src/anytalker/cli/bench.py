"""`anytalker bench` (being moved here from anytalker.evaluation.bench)."""

from ..evaluation.bench import add_bench_parser as add_parser  # noqa: F401
