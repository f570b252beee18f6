"""The recipe's step 10: each `ablations` entry retrained from the same base, data and step budget
with its changes, and evaluated like the model (see `step_ablations`)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

from ...utils.atomic import atomic_directory, write_json_atomic
from .bundled import pipeline_with
from .evaluation import evaluate_puppets_model, evaluation_settings, held_out_scenes
from .stages import merge_overrides, stage_transformer, step_train


def json_once(path: Path, make: Callable[[], dict]) -> dict:
    """The JSON at `path`, made (and written atomically) the first time: resumable evaluations."""
    if not path.is_file():
        write_json_atomic(path, make())
    return json.loads(path.read_text())


def train_ablation(out: Path, run: Path, change: dict, stages: dict, progress: bool) -> dict:
    """Trains `stages` (configs) into `run`, from the base transformer with `change["transformer"]`
    config overrides when given; returns each stage's training summary."""
    from ...models import AnyTalkerTransformer
    from ...pipeline.runner import quiet_loading

    start = None
    if change.get("transformer"):
        start = run / "start_transformer"
        if not (start / "config.json").is_file():
            with quiet_loading():
                model = AnyTalkerTransformer.from_pretrained(out / "base" / "transformer", **change["transformer"])
            with atomic_directory(start) as partial:
                model.save_pretrained(partial)
    return {stage: step_train(out, stages, stage, progress, run, start) for stage in stages}


def step_ablations(out: Path, recipe: dict, configs: dict, progress: bool, say: Callable[[str], None]) -> dict:
    """Each recipe `ablations` entry retrained from the same base, data and step budget with its
    changes (`transformer`: config of the starting transformer, `stage1`/`stage2`: training config
    overrides, `skip_stage2`: stage 1 only, for both stages' steps), into OUT/ablations/NAME, and
    evaluated like the model: on the two-puppet scenes (evaluation.json; with two stages, stage 1
    alone too: evaluation_stage1.json) and the 3-puppet ones (generalisation.json). Finished parts
    are skipped, so a rerun resumes."""
    kwargs = evaluation_settings(recipe, progress)
    persons = recipe["generalisation"]["persons"]
    summaries = {}
    for name, change in (recipe.get("ablations") or {}).items():
        run = out / "ablations" / name
        stages = {stage: copy.deepcopy(configs[stage]) for stage in ("stage1", "stage2")}
        for stage, config in stages.items():
            merge_overrides(config, change.get(stage) or {})
        if change.get("skip_stage2"):  # the same budget: stage 1 runs stage 2's steps too
            stages["stage1"]["train"]["max_steps"] += stages.pop("stage2")["train"]["max_steps"]
        last = list(stages)[-1]

        def evaluate(stage: str, scene_persons: int) -> dict:
            return evaluate_puppets_model(pipeline_with(out / "base", stage_transformer(run, stage)),
                                          held_out_scenes(recipe, scene_persons), **kwargs)

        def train_and_evaluate() -> dict:
            say(f"[puppets-tiny] ablation {name}: {json.dumps(change)}")
            training = train_ablation(out, run, change, stages, progress)
            return {"change": change, "training": training, **evaluate(last, 2)}

        summaries[name] = {"two": json_once(run / "evaluation.json", train_and_evaluate)["summary"]}
        if last == "stage2":
            summaries[name]["stage1"] = json_once(run / "evaluation_stage1.json",
                                                  lambda: evaluate("stage1", 2))["summary"]
        summaries[name]["three"] = json_once(run / "generalisation.json",
                                             lambda: evaluate(last, persons) | {"persons": persons})["summary"]
    return summaries
