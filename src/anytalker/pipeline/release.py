"""The folder a user has after following the release's download instructions, loaded as it is.

    checkpoints/
      Wan2.1-Fun-1.3B-Inp/   Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth,
                             models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth,
                             google/umt5-xxl/ (tokenizer), diffusion_pytorch_model.safetensors
      wav2vec2-base-960h/    (transformers format)
      AnyTalker/             1_3B-single-v1.pth, 14B-multi-v1.pth, config_af2v_1_3B.json, config_af2v_14B.json

The Wan folder may instead be in diffusers layout (`model_index.json`, `vae/`, `text_encoder/`,
`tokenizer/`, `image_encoder/`, `transformer/`). Every expected path is checked before anything
loads, and a missing one is named in the error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..utils.checkpoints import CheckpointError

VARIANTS = {
    # variant: (AnyTalker checkpoint, AnyTalker DiT config)
    "1.3B": ("1_3B-single-v1.pth", "config_af2v_1_3B.json"),
    "14B": ("14B-multi-v1.pth", "config_af2v_14B.json"),
}
WAN_DIR = "Wan2.1-Fun-1.3B-Inp"
WAV2VEC_DIR = "wav2vec2-base-960h"
ANYTALKER_DIR = "AnyTalker"
RELEASE_WAN_FILES = {
    "vae": "Wan2.1_VAE.pth",
    "text_encoder": "models_t5_umt5-xxl-enc-bf16.pth",
    "tokenizer": "google/umt5-xxl",
    "image_encoder": "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
}


@dataclass(frozen=True)
class ReleaseFolder:
    """Paths of every file of a release download, for one DiT variant."""

    root: Path
    variant: str = "1.3B"
    wan_dir: Path | None = None  # default: root / Wan2.1-Fun-1.3B-Inp
    base_transformer: Path | None = None  # weights the AnyTalker file lacks (default: the 1.3B Wan DiT)
    # Constructor configs (release argument names) for components whose size differs from the
    # released one, e.g. {"vae": {"dim": 8}}; keys: "vae", "text_encoder", "image_encoder".
    configs: dict | None = None

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {sorted(VARIANTS)}")

    @property
    def wan(self) -> Path:
        return Path(self.wan_dir) if self.wan_dir else Path(self.root) / WAN_DIR

    @property
    def wan_is_diffusers(self) -> bool:
        return (self.wan / "model_index.json").is_file()

    def paths(self) -> dict[str, Path]:
        checkpoint, config = VARIANTS[self.variant]
        anytalker = Path(self.root) / ANYTALKER_DIR
        paths = {"transformer": anytalker / checkpoint, "transformer_config": anytalker / config,
                 "audio_encoder": Path(self.root) / WAV2VEC_DIR}
        if self.wan_is_diffusers:
            paths.update({name: self.wan / name for name in RELEASE_WAN_FILES})
        else:
            paths.update({name: self.wan / file for name, file in RELEASE_WAN_FILES.items()})
        base = self.base_transformer
        if base is None and self.variant == "1.3B":  # the 14B AnyTalker file is a whole model
            base = self.wan / "transformer" if self.wan_is_diffusers else self.wan
        if base is not None:
            paths["base_transformer"] = Path(base)
        return paths

    def check(self) -> dict[str, Path]:
        """All paths, or one CheckpointError listing every missing one."""
        paths = self.paths()
        missing = [f"  {name}: {path}" for name, path in paths.items() if not path.exists()]
        if "base_transformer" in paths and paths["base_transformer"].is_dir() and not any(
                paths["base_transformer"].glob("*.safetensors")):
            missing.append(f"  base_transformer: {paths['base_transformer']}/diffusion_pytorch_model*.safetensors")
        if missing:
            raise CheckpointError(f"release folder {self.root} ({self.variant}) is incomplete; missing:\n"
                                  + "\n".join(missing))
        return paths


def load_release_components(folder: ReleaseFolder, torch_dtype: torch.dtype = torch.bfloat16) -> dict:
    """Every pipeline component from a release download, built on the meta device and filled in place.

    `torch_dtype` applies to the transformer, text and image encoders; the VAE and wav2vec2 stay
    in float32, as the release runs them.
    """
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, CLIPVisionModel, UMT5EncoderModel

    from ..encoders.image import load_clip_vision
    from ..encoders.text import load_umt5_encoder, load_umt5_tokenizer
    from ..encoders.vae import load_wan_vae
    from ..encoders.wav2vec import load_wav2vec2
    from ..models import AnyTalkerTransformer
    from .scheduling import default_scheduler

    paths = folder.check()
    configs = folder.configs or {}
    unknown = sorted(set(configs) - {"vae", "text_encoder", "image_encoder"})
    if unknown:
        raise ValueError(f"configs for unknown components {unknown}; expected vae, text_encoder, image_encoder")
    if folder.wan_is_diffusers:
        wan = dict(local_files_only=True)
        components = {
            "vae": AutoencoderKLWan.from_pretrained(paths["vae"], torch_dtype=torch.float32, **wan),
            "text_encoder": UMT5EncoderModel.from_pretrained(paths["text_encoder"], dtype=torch_dtype, **wan),
            "tokenizer": AutoTokenizer.from_pretrained(paths["tokenizer"], **wan),
            "image_encoder": CLIPVisionModel.from_pretrained(paths["image_encoder"], dtype=torch_dtype, **wan),
        }
    else:
        components = {
            "vae": load_wan_vae(paths["vae"], dtype=torch.float32, config=configs.get("vae")),
            "text_encoder": load_umt5_encoder(paths["text_encoder"], dtype=torch_dtype,
                                              config=configs.get("text_encoder")),
            "tokenizer": load_umt5_tokenizer(paths["tokenizer"]),
            "image_encoder": load_clip_vision(paths["image_encoder"], dtype=torch_dtype,
                                              config=configs.get("image_encoder")),
        }
    components["transformer"] = AnyTalkerTransformer.from_official(
        paths["transformer"], paths["transformer_config"], torch_dtype=torch_dtype,
        base_checkpoint=paths.get("base_transformer"))
    components["audio_encoder"] = load_wav2vec2(paths["audio_encoder"], dtype=torch.float32)
    components["scheduler"] = default_scheduler()
    return components


def release_folder(root: str | os.PathLike, variant: str = "1.3B", wan_dir=None, base_transformer=None,
                   configs: dict | None = None) -> ReleaseFolder:
    return ReleaseFolder(Path(root), variant, Path(wan_dir) if wan_dir else None,
                         Path(base_transformer) if base_transformer else None, configs)
