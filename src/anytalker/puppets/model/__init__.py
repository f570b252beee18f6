"""puppets-tiny: a tiny AnyTalker trained on the puppet world on a CPU, its recipe and its evaluation.

    bundled      the bundled weights and recipe pipelines (`load_pipeline`, `WeightsMissing`),
                 the parts a fresh one is built from (`build_components`)
    cache        `PuppetCache`: the encodings `prepare` caches for puppet clips
    metrics      lip sync, binding and Interactivity of a video of a scene (`scene_metrics`)
    evaluation   `generate_scene` (through `anytalker.pipeline.runner.generate`), held-out scenes,
                 `evaluate_puppets_model`, `vae_fidelity`; recipe steps 8-9
    recipe       the 11-step recipe (`train_puppets_model`, `anytalker puppets train-model`), its
                 configs (`load_recipe`) and state; its steps live in stages (1-7), evaluation
                 (8-9), ablations (10) and report (11, `results_table`)

The demo (`anytalker demo`) uses `load_pipeline`, `generate_scene` and `scene_metrics` on one scene.
"""

from __future__ import annotations

from .bundled import RETRAIN_HINT, WeightsMissing, build_components, load_pipeline, pipeline_with
from .cache import PuppetCache
from .evaluation import evaluate_puppets_model, evaluation_scenes, generate_scene, vae_fidelity
from .metrics import correlation, finite_mean, one_speaker_moments, scene_metrics, summarize_metrics
from .recipe import STEPS, default_config_dir, load_recipe, train_puppets_model
from .report import TABLE_COLUMNS, results_table

__all__ = [
    "RETRAIN_HINT", "STEPS", "TABLE_COLUMNS", "PuppetCache", "WeightsMissing", "build_components", "correlation",
    "default_config_dir", "evaluate_puppets_model", "evaluation_scenes", "finite_mean", "generate_scene",
    "load_pipeline", "load_recipe", "one_speaker_moments", "pipeline_with", "results_table", "scene_metrics",
    "summarize_metrics", "train_puppets_model", "vae_fidelity",
]
