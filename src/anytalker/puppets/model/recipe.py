"""The puppets-tiny recipe: its configs, its state, and `train_puppets_model`, which runs it.

The recipe (`train_puppets_model`, CLI `anytalker puppets train-model OUT [--quick]`) runs, each
step resumable and skipped when done (state in OUT/recipe_state.json):

1. data       single-puppet clips (stage 1) and two-puppet conversations (stage 2), `puppets make`
              style clip folders under OUT/clips/{stage1,stage2}
2. vae        a Wan VAE of base width 8 trained from scratch on those clips (training/vae.py):
              image phase, video phase, latent statistics re-estimated; OUT/vae + OUT/vae_metrics.json
3. base       the pipeline to train: trained VAE + random tiny umT5 / CLIP / wav2vec2 (frozen, fixed
              seed: random features still carry what the model needs) + a CPU-sized transformer with
              fused AFCA; OUT/base (diffusers format)
4. prepare    `anytalker prepare` of both sets with cached encodings (see `PuppetCache`): stage-1
              singles as one 64x64 tile (the face-centred half view), stage-2 pairs at 64x128
5. stage1     `anytalker train` with configs/puppets/stage1.yaml (half of the batches two singles
              side by side); OUT/stage1
6. stage2     from stage 1's EMA weights, configs/puppets/stage2.yaml on the conversations; OUT/stage2
7. export     OUT/puppets-tiny (stage 2) and OUT/puppets-tiny-stage1 (stage 1 only), diffusers format
8. evaluate   held-out scenes (fresh seeds): stage 1 vs stage 2 vs the ground-truth renders;
              OUT/evaluation.json
9. generalise the same on 3-puppet scenes (training saw at most 2); OUT/generalisation.json
10. ablations each recipe `ablations` entry (AFCA without face masks, stage 1 without pairs,
              stage 2 skipped) retrained with the same data and steps, evaluated alike;
              OUT/ablations/NAME
11. report    OUT/results.md (the tables of the README) and puppets-tiny/evaluation.json

Steps 1-7 are in `stages`, 8-9 in `evaluation`, 10 in `ablations`, 11 in `report`.
The model alone is steps 1-7 (`--until export`, ~70 minutes on 2 CPU cores); the whole recipe
with its evaluations and ablations ~3.5 hours (CPU speed varies: up to twice that was seen).

Sizes live in configs/puppets/recipe.yaml (and the two training configs next to it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ...utils.atomic import write_json_atomic
from .stages import merge_overrides

STEPS = ("data", "vae", "base", "prepare", "stage1", "stage2", "export", "evaluate", "generalise", "ablations",
         "report")


def default_config_dir() -> Path:
    """configs/puppets of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[4] / "configs" / "puppets"


def load_recipe(config_dir: str | os.PathLike | None = None, quick: bool = False) -> dict:
    """The recipe: {"recipe": recipe.yaml (quick overrides applied), "stage1": ..., "stage2": ...}."""
    import yaml

    folder = Path(config_dir) if config_dir else default_config_dir()
    names = {"recipe": "recipe.yaml", "stage1": "stage1.yaml", "stage2": "stage2.yaml"}
    missing = [name for name in names.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"recipe configs {missing} not found in {folder}: run from a source checkout "
                                f"(configs/puppets/) or pass --configs DIR")
    loaded = {key: yaml.safe_load((folder / name).read_text()) for key, name in names.items()}
    if quick:
        overrides = loaded["recipe"].pop("quick", {}) or {}
        for key in ("stage1", "stage2"):
            merge_overrides(loaded[key], overrides.pop(key, {}) or {})
        merge_overrides(loaded["recipe"], overrides)
    else:
        loaded["recipe"].pop("quick", None)
    return loaded


class _State:
    """OUT/recipe_state.json: finished steps (with their wall time, and the torch threads they ran
    on: CPU float sums, and so the trained weights, depend on the thread count) and their results."""

    def __init__(self, out: Path):
        self.path = out / "recipe_state.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"done": {}, "results": {}}

    def done(self, step: str) -> bool:
        return step in self.data["done"]

    def finish(self, step: str, seconds: float, result=None) -> None:
        import torch

        self.data["done"][step] = round(seconds, 1)
        self.data.setdefault("threads", {})[step] = torch.get_num_threads()
        if result is not None:
            self.data["results"][step] = result
        write_json_atomic(self.path, self.data)


def train_puppets_model(out: str | os.PathLike, quick: bool = False, config_dir: str | os.PathLike | None = None,
                        progress: bool = True, until: str | None = None,
                        log: Callable[[str], None] | None = None) -> dict:
    """Runs the recipe into `out` (see the module doc); finished steps are skipped, so a rerun
    resumes. `until` stops after that step. Returns the state (step times and results)."""
    import torch

    from .ablations import step_ablations
    from .evaluation import step_evaluate, step_generalise
    from .report import step_report
    from .stages import step_base, step_data, step_export, step_prepare, step_train, step_vae

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_recipe(config_dir, quick)
    recipe = loaded["recipe"]
    configs = {"stage1": loaded["stage1"], "stage2": loaded["stage2"]}
    settings_path = out / "recipe.json"
    if settings_path.is_file() and json.loads(settings_path.read_text()).get("quick") != quick:
        raise ValueError(f"{out} holds a {'quick' if not quick else 'full'} run; use another folder")
    settings_path.write_text(json.dumps({"quick": quick, **loaded}, indent=1))
    if until is not None and until not in STEPS:
        raise ValueError(f"until must be one of {STEPS}, got {until!r}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(4, os.cpu_count() or 1))))
    say = log or (lambda text: print(text, file=sys.stderr))
    state = _State(out)
    actions = {
        "data": lambda: step_data(out, recipe["data"], progress),
        "vae": lambda: step_vae(out, recipe, progress),
        "base": lambda: step_base(out, recipe),
        "prepare": lambda: step_prepare(out, recipe, progress),
        "stage1": lambda: step_train(out, configs, "stage1", progress),
        "stage2": lambda: step_train(out, configs, "stage2", progress),
        "export": lambda: step_export(out, recipe, configs, state.data.get("threads", {})),
        "evaluate": lambda: step_evaluate(out, recipe, progress),
        "generalise": lambda: step_generalise(out, recipe, progress),
        "ablations": lambda: step_ablations(out, recipe, configs, progress, say),
        "report": lambda: step_report(out, state.data["results"]),
    }
    for step in STEPS:
        if not state.done(step):
            start = time.perf_counter()
            say(f"[puppets-tiny] {step} ...")
            result = actions[step]()
            state.finish(step, time.perf_counter() - start, result)
            say(f"[puppets-tiny] {step} done in {time.perf_counter() - start:.0f} s"
                + (f": {json.dumps(result)}" if result else ""))
        if step == until:
            break
    return state.data
