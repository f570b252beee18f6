"""puppets-tiny pipelines: the bundled weights, recipe folders, and the parts a fresh one is built from.

Loading goes through `anytalker.pipeline.runner.build_pipeline` (fp32, CPU, bars and info logs off);
`WeightsMissing` says how to build the weights when they are not installed.
"""

from __future__ import annotations

import os
from pathlib import Path

RETRAIN_HINT = ("build them with `anytalker puppets train-model runs/puppets --until export` (about 40 minutes "
                "on 2 CPU cores) "
                "and copy runs/puppets/puppets-tiny to {target}, or pass a model folder")


class WeightsMissing(FileNotFoundError):
    """The bundled puppets-tiny weights are not installed."""


def load_pipeline(path: str | os.PathLike | None = None):
    """The puppets-tiny pipeline (fp32, CPU) from `path` (default: the bundled weights,
    `anytalker.pipeline.runner.bundled_puppets_folder()`)."""
    from ...pipeline.runner import ModelSettings, build_pipeline, bundled_puppets_folder

    folder = Path(path) if path else bundled_puppets_folder()
    if not (folder / "model_index.json").is_file():
        if path is None:
            raise WeightsMissing(f"the bundled puppets-tiny weights are missing ({folder}); "
                                 + RETRAIN_HINT.format(target=folder))
        raise WeightsMissing(f"no diffusers pipeline folder at {folder} (model_index.json missing)")
    pipe = build_pipeline(ModelSettings(model=str(folder), dtype="fp32"), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_with(base: str | os.PathLike, transformer_folder: str | os.PathLike):
    """The pipeline folder `base` (VAE, encoders) with the transformer of `transformer_folder`."""
    import torch

    from ...models import AnyTalkerTransformer
    from ...pipeline import AnyTalkerPipeline
    from ...pipeline.runner import quiet_loading

    pipe = load_pipeline(base)
    with quiet_loading():
        transformer = AnyTalkerTransformer.from_pretrained(transformer_folder, dtype=torch.float32).eval()
    pipe = AnyTalkerPipeline(**dict(pipe.components, transformer=transformer))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_components(vae, transformer_config: dict, encoder_seed: int = 0) -> dict:
    """Pipeline components: `vae` + the random tiny encoders of `random_tiny_components(encoder_seed)`
    + a fresh AnyTalkerTransformer (fused AFCA) with `transformer_config` on top of their widths."""
    import torch

    from ...models import AnyTalkerTransformer
    from ...pipeline.tiny import random_tiny_components

    parts = random_tiny_components(encoder_seed)
    text_dim = parts["text_encoder"].config.d_model
    image_dim = parts["image_encoder"].config.hidden_size
    audio = parts["audio_encoder"].config
    config = {"text_dim": text_dim, "text_len": 32, "image_dim": image_dim, "face_dim": image_dim,
              "audio_layers": audio.num_hidden_layers, "audio_channels": audio.hidden_size,
              "audio_attention": "fused", **transformer_config}
    torch.manual_seed(encoder_seed + 1)
    parts["transformer"] = AnyTalkerTransformer(**config).eval()
    parts["vae"] = vae.eval()
    for name in ("text_encoder", "image_encoder", "audio_encoder", "vae"):
        parts[name].requires_grad_(False)
    return parts
