"""`run_bench`: every case of a benchmark generated with one model (resumable), evaluated,
tabulated and plotted. Every input is checked before a model is loaded.

    from anytalker.evaluation.bench import BenchSettings, run_bench
    from anytalker.pipeline.runner import InputSettings, ModelSettings, SamplingSettings

    summary = run_bench(BenchSettings("InteractiveEyes", "results", image="two.png"),
                        ModelSettings("checkpoints"), SamplingSettings(), InputSettings())

Over the processes of a launch (`torchrun --nproc_per_node P -m anytalker.cli bench ...`, `accelerate
launch`), the cases to generate are shared as `anytalker.pipeline.batch.run_batch` shares its tasks
(`share_of`: case i belongs to process i mod P): each process checks every kept video, prepares and
generates its own cases, each video written atomically by its owner (the sidecar records its rank),
a failed generation recorded and the others going on. Then every process hands its failure records
to rank 0 (`parallel.collect`, a barrier), which evaluates and writes the tables and plots; the other
processes return None.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ...pipeline import runner
from ...pipeline.settings import InputSettings, ModelSettings, SamplingSettings
from ...utils.records import jsonable, read_record, write_record
from .cases import BenchError, Case, benchmark_kind, clip_reference, find_cases, select_cases
from .evaluate import MetricContext, evaluate_case, failure_record, metric_context
from .plots import write_plots
from .report import columns_for, result_lines, summarize_records, write_tables
from .resume import file_signature, kept_record_matches, kept_video_mismatch
from .settings import BenchSettings, metrics_for

if TYPE_CHECKING:
    from ...acceleration.parallel import ParallelContext

__all__ = ["run_bench"]

def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _silent(message: str) -> None:
    pass


def run_bench(bench: BenchSettings, model: ModelSettings, sampling: SamplingSettings, inputs: InputSettings,
              progress: bool = True, say: Callable[[str], None] = print,
              notify: Callable[[str], None] = _stderr, context: ParallelContext | None = None) -> dict | None:
    """Generates every case of a benchmark (resumable), evaluates them, writes CSV, markdown and plots.

    Returns the summary (cases, scored, failed, failures by reason, means and counts per column,
    plots). `say` receives the progress and result lines, `notify` the notices (regenerated videos,
    missing plots). Raises BenchError (SettingsError for bad settings) before any model is loaded
    when an input is wrong: unknown case, missing weights or reference images, kept videos made with
    other settings. Failures of single cases are recorded and counted, never raised.

    `context`: this process's place in the launch (default: the launcher's environment). With several
    processes each generates its share; rank 0 alone evaluates, tabulates and returns the summary, the
    others return None (and say nothing but notices).
    """
    from tqdm import tqdm

    # Imported here (as the others below): parallel imports torch, which `anytalker --help` and the
    # bench's flag parsing should not pay for.
    from ...acceleration.parallel import ParallelContext, ParallelSettings, collect, launch_env, start_parallel
    from ...faces.detection import DetectorUnavailable
    from ...pipeline.batch import share_of
    from ...utils.checkpoints import CheckpointError
    from ..speakers import SpeakerLabelError
    from ..weights import MissingWeightsError

    bench = bench.validate()
    if context is None:
        context = start_parallel(ParallelSettings()) if launch_env()[1] > 1 else ParallelContext()
    several = context.world_size > 1
    if several and context.rank != 0:
        say, progress = _silent, False
    sampling = runner.resolved_sampling(model, sampling)  # kept sidecars record the values used
    out = Path(bench.out).absolute()
    try:
        kind = benchmark_kind(bench.benchmark)
        if kind == "clips" and (bench.image or bench.frames):
            raise BenchError("--image / --frames are for InteractiveEyes: a clip's reference is its first frame")
        metrics = metrics_for(bench, kind)
        all_cases = find_cases(bench.benchmark, kind, bench.image, bench.frames, bench.time_format)
        cases = select_cases(all_cases, bench.cases, bench.limit)
        if not cases:
            raise BenchError(f"no cases in {bench.benchmark}")
        ctx = metric_context(bench, metrics)
        separator = runner.load_separator(inputs)
    except BenchError:
        raise
    except (SpeakerLabelError, MissingWeightsError, DetectorUnavailable, FileNotFoundError, ValueError) as problem:
        raise BenchError(str(problem)) from problem

    # 1. Inputs and kept videos; everything is checked before a model is loaded.
    records: dict[str, dict] = {}
    # Several processes: each checks every kept video but prepares and generates only its own cases.
    mine = {case.name for case in share_of(cases, context)} if several else None
    to_generate, kept, notes = _plan(cases, out, bench, model, sampling, inputs, separator, records, mine)
    share = f"rank {context.rank} of {context.world_size}: {len(mine)} of " if several else ""
    say(f"{share}{len(cases)} cases: {kept} videos kept, {len(to_generate)} to generate, "
        f"{sum(r['stage'] == 'input' for r in records.values())} with input failures")
    for note in notes:
        notify(f"note: {note}")

    # 2. Generation: the model is loaded only when something is to be generated.
    if to_generate:
        try:
            loaded = runner.load_pipeline(model, progress=progress)
        except (CheckpointError, ValueError, OSError) as problem:
            raise BenchError(str(problem)) from problem
        extra = {"rank": context.rank, "world_size": context.world_size} if several else {}
        for case, prepared, video in tqdm(to_generate, desc="generating", unit="case", disable=not progress):
            started = time.perf_counter()
            try:
                result = runner.generate(loaded, prepared, sampling)
                runner.write_output(video, result, prepared, benchmark_case=case.name,
                                    generation_s=time.perf_counter() - started, **extra)
            except (RuntimeError, ValueError, OSError) as problem:  # torch OOM is a RuntimeError
                records[case.name] = failure_record(case, "generation", "generation_error",
                                                    f"{type(problem).__name__}: {problem}")

    if several:  # every process's input and generation failures to rank 0, once all are done
        gathered = collect(records, context)
        if context.rank != 0:
            return None
        for part in gathered:
            records.update(part)
        for case in cases:  # the other processes' clips: their references were written by their owners
            if case.clip is not None and case.name not in records:
                case.image = out / "references" / f"{case.name}.png"

    # 3. Evaluation: kept metric records are reused when video and settings are unchanged.
    reused = _evaluate(cases, out, ctx, bench.reevaluate, records, progress)

    # 4. Tables and plots.
    ordered = [records[case.name] for case in cases]
    columns = columns_for(metrics, ["left", "right"] if kind == "interactiveeyes" else [], kind)
    summary = summarize_records(ordered, columns)
    plots, notice = write_plots(out, ordered, columns)
    summary["plots"] = [str(p.relative_to(out)) for p in plots]
    summary["plots_note"] = notice
    write_tables(out, ordered, columns, summary, _header(bench, model, sampling, kind, metrics,
                                                         f"{len(cases)} of {len(all_cases)} cases"))
    if notice:
        notify(f"note: {notice}")
    for line in result_lines(ordered, columns, summary):
        say(line)
    say(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {len(plots)} plot(s); {reused} metric record(s) reused")
    return summary


def _plan(cases: list[Case], out: Path, bench: BenchSettings, model: ModelSettings, sampling: SamplingSettings,
          inputs: InputSettings, separator, records: dict, mine: set[str] | None = None) -> tuple[list, int, list[str]]:
    """([(case, prepared task, video path)] to generate, number of kept videos, notes). Input failures
    go to `records`; kept videos made with other settings raise BenchError. `mine`: the cases this
    process generates (default all); the others' kept videos are checked only (nothing is written)."""
    from ...pipeline.tasks import GenerationTask

    videos = out / "videos"
    to_generate, mismatched, notes, kept = [], [], [], 0
    for case in cases:
        if mine is not None and case.name not in mine:  # another process's case: its kept video is checked
            video = videos / f"{case.name}.mp4"
            sidecar = read_record(video.with_suffix(".json")) if video.is_file() else None
            why = None if case.problem or sidecar is None or bench.overwrite else \
                kept_video_mismatch(case, sidecar, model, sampling)
            if why:
                mismatched.append(f"{case.name}: {why}")
            continue
        if case.problem:
            records[case.name] = failure_record(case, "input", *case.problem)
            continue
        if case.clip is not None:
            try:
                clip_reference(case, out)
            except ValueError as problem:
                records[case.name] = failure_record(case, "input", "unreadable_clip", str(problem))
                continue
        video = videos / f"{case.name}.mp4"
        sidecar = read_record(video.with_suffix(".json")) if video.is_file() else None
        if sidecar is not None and not bench.overwrite:
            why = kept_video_mismatch(case, sidecar, model, sampling)
            if why:
                mismatched.append(f"{case.name}: {why}")
            else:
                kept += 1
            continue
        if video.is_file() and not bench.overwrite:  # the sidecar is written last: an interrupted write
            notes.append(f"{case.name}: {video.name} has no readable sidecar: regenerated")
        task = GenerationTask(case.name, str(case.image), [str(a) for a in case.audio], bench.prompt,
                              audio_mode="pad")
        try:
            prepared = runner.prepare(task, inputs, separator=separator)
        except (ValueError, FileNotFoundError, RuntimeError) as problem:
            records[case.name] = failure_record(case, "input", "invalid_input", str(problem))
            continue
        to_generate.append((case, prepared, video))
    if mismatched:
        raise BenchError(f"{len(mismatched)} kept video(s) in {videos} were made with other settings "
                         "(pass --overwrite to regenerate them, or the same settings):\n       "
                         + "\n       ".join(mismatched))
    return to_generate, kept, notes


def _evaluate(cases: list[Case], out: Path, ctx: MetricContext, reevaluate: bool, records: dict,
              progress: bool) -> int:
    """Scores every case not failed yet (into `records`, each written to OUT/metrics/<case>.json);
    returns how many kept metric records were reused."""
    from tqdm import tqdm

    videos, metrics_dir = out / "videos", out / "metrics"
    reused = 0
    for case in tqdm([c for c in cases if c.name not in records], desc="evaluating", unit="case",
                     disable=not progress):
        video, path = videos / f"{case.name}.mp4", metrics_dir / f"{case.name}.json"
        if not video.is_file():  # a generation that wrote nothing without raising
            records[case.name] = failure_record(case, "generation", "no_video", f"{video} was not written")
            continue
        signature = file_signature(video)
        kept_record = None if reevaluate else read_record(path)
        if kept_record_matches(kept_record, signature, ctx.settings):
            records[case.name] = kept_record
            reused += 1
            continue
        record = evaluate_case(case, video, ctx)
        record.update(status="failed" if record["failures"] else "ok", stage="evaluation" if record["failures"]
                      else None, video_signature=signature, settings=ctx.settings)
        records[case.name] = jsonable(record)
        write_record(path, record)
    for case in cases:  # input and generation failures are recorded too (retried on the next run)
        if records[case.name].get("stage") in ("input", "generation"):
            write_record(metrics_dir / f"{case.name}.json", records[case.name])
    return reused


def _header(bench: BenchSettings, model: ModelSettings, sampling: SamplingSettings, kind: str,
            metrics: tuple[str, ...], selected: str) -> dict:
    """results.md's title and details (also the first keys of summary.json)."""
    name = Path(bench.benchmark).absolute().name
    if bench.image:
        reference = str(bench.image)
    elif kind == "clips":
        reference = "first frame of each clip"
    else:
        reference = str(Path(bench.frames or Path(bench.benchmark) / "frames"))
    size = "x".join(map(str, sampling.size)) if sampling.size else "default"
    return {"title": f"AnyTalker benchmark: {name}" + (f" ({kind})" if name.lower() != kind else ""), "details": {
        "benchmark": str(bench.benchmark), "kind": kind, "model": model.model, "selected": selected,
        "steps": sampling.steps, "size": size, "seed": sampling.seed, "fps": sampling.fps,
        "metrics": ", ".join(metrics), "landmarks": bench.backend, "reference": reference,
    }}
