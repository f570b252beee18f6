"""AnyTalkerPipeline: the diffusers pipeline that composes AnyTalker's components."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, UniPCMultistepScheduler
from transformers import CLIPVisionModel, UMT5EncoderModel, Wav2Vec2Model

from ..models import AnyTalkerTransformer
from .release import load_release_components, release_folder


class AnyTalkerPipeline(DiffusionPipeline):
    """Reference image + N audio tracks + prompt -> talking video of N people.

    Components: `transformer` (AnyTalkerTransformer), `vae` (AutoencoderKLWan), `text_encoder`
    (umT5) + `tokenizer`, `image_encoder` (CLIP ViT-H/14 vision tower), `audio_encoder` (wav2vec2),
    `scheduler` (UniPC with flow sigmas, as released).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->audio_encoder->transformer->vae"

    def __init__(
        self,
        transformer: AnyTalkerTransformer,
        vae: AutoencoderKLWan,
        text_encoder: UMT5EncoderModel,
        tokenizer,
        image_encoder: CLIPVisionModel,
        audio_encoder: Wav2Vec2Model,
        scheduler: UniPCMultistepScheduler,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              image_encoder=image_encoder, audio_encoder=audio_encoder, scheduler=scheduler)

    @classmethod
    def from_release(cls, root: str | os.PathLike, variant: str = "1.3B", torch_dtype: torch.dtype = torch.bfloat16,
                     wan_dir=None, base_transformer=None, configs: dict | None = None) -> "AnyTalkerPipeline":
        """Loads a release download folder as it is (see `anytalker.pipeline.release`)."""
        folder = release_folder(root, variant, wan_dir, base_transformer, configs)
        return cls(**load_release_components(folder, torch_dtype))

    def save_pretrained_atomic(self, save_directory: str | os.PathLike, overwrite: bool = False, **kwargs) -> Path:
        """`save_pretrained` into a temporary sibling folder, renamed into place when complete,
        so an interrupted conversion never leaves a half-written model folder."""
        target = Path(save_directory)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True (--overwrite) to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            self.save_pretrained(partial, **kwargs)
            if target.exists():
                shutil.rmtree(target)
            os.replace(partial, target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return target
