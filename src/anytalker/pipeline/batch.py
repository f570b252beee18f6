"""Many videos over the processes of a launch: `run_batch`.

Task i belongs to process group i mod G (G = world_size / K, see `anytalker.acceleration.parallel`),
a fixed assignment, so no coordination is needed and a re-run with the same launch gives every
task to the same group. Each group skips the outputs that are finished (the mp4 and its sidecar
exist), prepares and generates the rest, and its writer writes each output atomically.

Two ways to meet a bad task:
- strict (`keep_going=False`, one process: the CLI's behaviour): every input is prepared first
  and all input errors are raised together (`BatchInputError`) before any model loads;
- keep going (a launch of several processes): a task that fails is recorded with its reason in
  `<output folder>/failed/<task>.json` and the others go on; a later success removes the record.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..acceleration.parallel import ParallelContext, broadcast_object, parallelize
from ..utils.atomic import write_json_atomic
from . import runner
from .settings import InputSettings, ModelSettings, SamplingSettings
from .tasks import GenerationTask

FAILED_FOLDER = "failed"


class BatchInputError(ValueError):
    """Input problems of a strict batch, one line per task ("name: problem"), before any model loaded."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class BatchSetupError(RuntimeError):
    """The batch could not start: the vocal separator or the model did not load."""


@dataclass
class BatchEvent:
    """What happened to one task (reported on the group's writer only)."""

    kind: str  # "skipped" (finished before) | "written" | "failed"
    name: str
    out: Path
    info: dict = field(default_factory=dict)  # written: the result's info; failed: {"reason": ...}


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # task name -> reason


def failure_record(out: str | Path) -> Path:
    """Where the failure of the task writing `out` is recorded: `<out folder>/failed/<stem>.json`."""
    out = Path(out)
    return out.parent / FAILED_FOLDER / f"{out.stem}.json"


def is_finished(out: str | Path) -> bool:
    """The mp4 and its sidecar both exist (each is written atomically, the sidecar last)."""
    out = Path(out)
    return out.is_file() and out.with_suffix(".json").is_file()


def share_of(tasks: Sequence, context: ParallelContext) -> list:
    """The tasks of this process's group: every G-th, starting at the group's index."""
    return list(tasks[context.group::context.num_groups])


def run_batch(tasks: Sequence[tuple[GenerationTask, Path]], model: ModelSettings, sampling: SamplingSettings,
              inputs: InputSettings, context: ParallelContext | None = None, *, overwrite: bool = False,
              keep_going: bool | None = None, progress: bool = True,
              on_event: Callable[[BatchEvent], None] | None = None) -> BatchReport:
    """Generates this process's share of `tasks` ([(task, output mp4)]), loading the model once,
    only if something is left to do. `keep_going` defaults to "more than one process".

    Raises BatchInputError (strict mode) or BatchSetupError before any video is generated.
    """
    context = context or ParallelContext()
    keep_going = context.world_size > 1 if keep_going is None else keep_going
    report = BatchReport()

    def emit(kind, name, out, **info):
        if context.is_writer:
            {"skipped": report.skipped, "written": report.written}.get(kind, []).append(out)
            if kind == "failed":
                report.failed[name] = info["reason"]
                _record_failure(out, name, info, context)
            if on_event is not None:
                on_event(BatchEvent(kind, name, Path(out), info))

    mine = share_of(tasks, context)
    finished = broadcast_object([not overwrite and is_finished(out) for _, out in mine], context)
    todo = []
    for (task, out), done in zip(mine, finished):
        if done:
            emit("skipped", task.name, out)
        else:
            todo.append((task, Path(out)))
    if not todo:
        return report

    separator = _on_writer(lambda: runner.load_separator(inputs), context, "the vocal separator")
    prepared = _prepare_all(todo, inputs, separator, context, keep_going, emit)
    loaded = None
    for task, out, item in prepared:
        if item is None:
            item = _prepare_one(task, inputs, separator, context)
            if isinstance(item, str):
                emit("failed", task.name, out, reason=item, stage="inputs")
                continue
        if loaded is None:
            loaded = _on_writer(lambda: _load(model, progress and context.is_writer, context), context,
                                "the model", everywhere=True)
        try:
            result = runner.generate(loaded, item, sampling)
            if context.is_writer:
                extra = {"context_parallel": context.context_parallel, "ring_degree": context.ring_degree} \
                    if context.context_parallel > 1 else {}
                runner.write_output(out, result, item, **extra)
                failure_record(out).unlink(missing_ok=True)
        except Exception as problem:  # noqa: BLE001 - recorded, the batch goes on
            if not keep_going:
                raise
            emit("failed", task.name, out, reason=f"{type(problem).__name__}: {problem}", stage="generation",
                 traceback=traceback.format_exc())
            continue
        emit("written", task.name, out, **result.info)
    return report


def _load(model: ModelSettings, progress: bool, context: ParallelContext):
    from ..utils.checkpoints import CheckpointError

    try:
        return parallelize(runner.load_pipeline(model, progress=progress), context)
    except (CheckpointError, ValueError, OSError) as problem:
        raise BatchSetupError(str(problem)) from problem


def _on_writer(make, context: ParallelContext, what: str, everywhere: bool = False):
    """make() on the group's writer (on every rank if `everywhere`); a failure stops every rank."""
    value, problem = None, None
    if everywhere or context.is_writer:
        try:
            value = make()
        except BatchSetupError as error:
            problem = str(error)
        except (FileNotFoundError, ValueError) as error:
            problem = str(error)
    problem = broadcast_object(problem, context) if not everywhere else problem
    if problem is not None:
        raise BatchSetupError(problem)
    return value


def _prepare_one(task: GenerationTask, inputs: InputSettings, separator, context: ParallelContext):
    """The task's PreparedTask, or its problem as text; prepared on the writer, shared with the group."""
    item = None
    if context.is_writer:
        try:
            item = runner.prepare(task, inputs, separator=separator)
        except (ValueError, FileNotFoundError, RuntimeError) as problem:
            item = str(problem)
    return broadcast_object(item, context)


def _prepare_all(todo, inputs, separator, context, keep_going, emit):
    """[(task, out, PreparedTask | None)]: strict mode prepares every task now (raising every
    input error at once); keep-going mode leaves None, to prepare each task when its turn comes."""
    if keep_going:
        return [(task, out, None) for task, out in todo]
    prepared, problems = [], []
    for task, out in todo:
        item = _prepare_one(task, inputs, separator, context)
        if isinstance(item, str):
            problems.append(f"{task.name}: {item}")
        else:
            prepared.append((task, out, item))
    if problems:
        raise BatchInputError(problems)
    return prepared


def _record_failure(out: Path, name: str, info: dict, context: ParallelContext) -> None:
    write_json_atomic(failure_record(out), {
        "task": name, "output": str(out), **info, "rank": context.rank, "world_size": context.world_size,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
