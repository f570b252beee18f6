"""AnyTalkerPipeline: the diffusers pipeline that composes AnyTalker's components.

`__call__` runs diffusers' numbered steps (as `pipelines/wan/pipeline_wan_i2v.py`): 1. `check_inputs`,
2. encode (`encode_prompt`, `encode_image`, `encode_audio`), then for each long-video window
3. `prepare_latents` (noise and the condition y), 4. `denoise` (the step loop), 5. `decode`; at the
end the windows are stitched into the video. Every condition comes from
`anytalker.pipeline.conditioning`, the functions the trainer and the puppets cache call too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan, DiffusionPipeline, UniPCMultistepScheduler
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPVisionModel, UMT5EncoderModel, Wav2Vec2Model

import anytalker.pipeline.conditioning as conditioning  # the module itself: `from . import` names the package

from ..audio.io import SAMPLE_RATE
from ..encoders.vae import decode_latents
from ..encoders.wav2vec import AudioFeatureEncoder
from ..faces.detection import FaceBox
from ..models import AnyTalkerTransformer
from ..utils.atomic import atomic_directory
from .conditioning import reference_latents
from .release import load_release_components, release_folder
from .schedule import choose_resolution, frames_for_duration, latent_aligned, plan_windows
from .settings import SamplingSettings

# Wan2.1's default negative prompt (the release samples with it).
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)


@dataclass
class AnyTalkerPipelineOutput(BaseOutput):
    """frames: uint8 [F, H, W, 3] (output_type "np") or float [F, 3, H, W] in [-1, 1] ("pt"),
    exactly as many frames as cover the audio at `fps`; info: settings and timings for the sidecar."""

    frames: np.ndarray | torch.Tensor
    info: dict = field(default_factory=dict)


def guidance_passes(guidance_scale: float, audio_guidance_scale: float | None) -> int:
    """Passes of one batched forward: [cond, uncond], or [cond, text only, uncond] with an audio
    scale. At guidance_scale 1 the uncond term cancels, so its pass is not run (diffusers'
    `do_classifier_free_guidance`): [cond] alone, or [cond, text only]. Half the work for
    few-step LoRAs and puppets-tiny, which sample at guidance 1."""
    passes = 2 if audio_guidance_scale is None else 3
    return passes - 1 if guidance_scale == 1 else passes


def combine_guidance(predictions: torch.Tensor, guidance_scale: float, audio_guidance_scale: float | None):
    """Classifier-free guidance over the passes of one batched forward (`guidance_passes`).

    One scale (the release): passes [cond, uncond]; uncond = negative prompt + zero audio:
    uncond + s * (cond - uncond). Separate scales: passes [cond, text only (zero audio), uncond]:
    uncond + s_text * (text - uncond) + s_audio * (cond - text). With s (s_text) = 1 there is no
    uncond pass: cond, or text + s_audio * (cond - text).
    """
    if guidance_scale == 1:
        if audio_guidance_scale is None:
            return predictions
        cond, text = predictions.chunk(2)
        return text + audio_guidance_scale * (cond - text)
    if audio_guidance_scale is None:
        cond, uncond = predictions.chunk(2)
        return uncond + guidance_scale * (cond - uncond)
    cond, text, uncond = predictions.chunk(3)
    return uncond + guidance_scale * (text - uncond) + audio_guidance_scale * (cond - text)


def match_colour(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-channel mean/std of `frames` [3, F, H, W] moved to those of `reference` [3, H, W]:
    later windows of a long video are re-anchored on the reference image so colour cannot drift."""
    dims = tuple(range(1, frames.ndim))
    mean, std = frames.mean(dims, keepdim=True), frames.std(dims, keepdim=True)
    ref = reference.flatten(1)
    ref_mean, ref_std = ref.mean(1).view(-1, *[1] * (frames.ndim - 1)), ref.std(1).view(-1, *[1] * (frames.ndim - 1))
    return ((frames - mean) / std.clamp_min(1e-5) * ref_std + ref_mean).clamp(-1, 1)


class AnyTalkerPipeline(DiffusionPipeline):
    """Reference image + N audio tracks + prompt -> talking video of N people.

    Components: `transformer` (AnyTalkerTransformer), `vae` (AutoencoderKLWan), `text_encoder`
    (umT5) + `tokenizer`, `image_encoder` (CLIP ViT-H/14 vision tower), `audio_encoder` (wav2vec2),
    `scheduler` (UniPC with flow sigmas, as released).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->audio_encoder->transformer->vae"
    # What a step callback may read (`callback_on_step_end_tensor_inputs`) and replace: the window's
    # latents [1, 16, T, h, w], condition y [1, 20, T, h, w] and audio of every guidance pass
    # [passes, N, F, 5, layers, C] (pass 0 the tracks', the others zeros), and the call's prompt and
    # negative [1, L, D], image [1, 257, D] and face [1, N, 257, D] embeddings and face token masks
    # [1, N, h/2, w/2]. Replaced window tensors last for that window, the others for the call.
    _callback_tensor_inputs = ["latents", "condition", "audio_embeds", "prompt_embeds", "negative_prompt_embeds",
                               "image_embeds", "face_embeds", "face_token_masks"]

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
        # Geometry from the VAE config, once (as diffusers' Wan pipelines): 4n+1 frames, 8x8 pixels per latent.
        self.vae_scale_factor_temporal = self.vae.config.scale_factor_temporal if getattr(self, "vae", None) else 4
        self.vae_scale_factor_spatial = self.vae.config.scale_factor_spatial if getattr(self, "vae", None) else 8

    @property
    def _device(self) -> torch.device:
        return self._execution_device

    @property
    def patch_size(self) -> tuple[int, int]:
        """Latent pixels per transformer token, (height, width)."""
        return tuple(self.transformer.config.patch_size[1:])

    @property
    def current_window(self) -> int:
        """Index of the window being denoised (for step callbacks)."""
        return getattr(self, "_current_window", 0)

    @property
    def num_windows(self) -> int:
        """Windows of the current call (long audio is generated in several)."""
        return getattr(self, "_num_windows", 1)

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` (e.g. in a step callback) to skip the remaining steps, as in
        diffusers; no later window starts, so the video ends after the current one."""
        return getattr(self, "_interrupt", False)

    # 1. ------------------------------------------------------------------------------------------
    def check_inputs(self, image: np.ndarray, audio: Sequence[np.ndarray], face_boxes: Sequence[FaceBox],
                     height: int | None = None, width: int | None = None, fps: int = 24,
                     num_inference_steps: int = 40, guidance_scale: float = 4.5,
                     audio_guidance_scale: float | None = None, max_frames_per_window: int = 81,
                     motion_frames: int = 5, callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)) -> None:
        """Every input error, before any model runs. The sampling values are checked by
        `SamplingSettings.validate` (anytalker.pipeline.settings: the one home of those rules)."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("image must be a uint8 RGB array [H, W, 3]")
        if len(audio) == 0:
            raise ValueError("need at least one audio track")
        if len(audio) != len(face_boxes):
            raise ValueError(f"{len(audio)} audio tracks but {len(face_boxes)} face boxes: one face per track")
        lengths = {int(np.asarray(track).shape[-1]) for track in audio}
        if len(lengths) != 1 or any(np.asarray(track).ndim != 1 for track in audio):
            raise ValueError("audio tracks must be aligned 1-D 16 kHz waveforms of equal length (see anytalker.audio)")
        image_h, image_w = image.shape[:2]
        for index, box in enumerate(face_boxes):
            if box.x0 < 0 or box.y0 < 0 or box.x1 > image_w or box.y1 > image_h:
                raise ValueError(f"face box {index} {box.as_tuple()} lies outside the {image_w}x{image_h} image")
        size = (height, width) if height is not None and width is not None else None
        SamplingSettings(size=size, fps=fps, steps=num_inference_steps, guidance_scale=guidance_scale,
                         audio_guidance_scale=audio_guidance_scale, max_frames_per_window=max_frames_per_window,
                         motion_frames=motion_frames).validate()
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown}: choose from {self._callback_tensor_inputs}")

    # 2. ------------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, negative_prompt: str, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt, negative) umT5 features, each [1, L, 4096], zero-padded to a common length."""
        features = conditioning.text_features(self.text_encoder, self.tokenizer, [prompt, negative_prompt],
                                              max_length=self.transformer.config.text_len)
        both = conditioning.pad_text(features).to(device, dtype)
        return both[:1], both[1:]

    def encode_image(self, pixels: torch.Tensor, face_boxes: Sequence[FaceBox], device, dtype):
        """CLIP tokens of the whole image [1, 257, D] and of each face crop [1, N, 257, D]."""
        whole = conditioning.clip_image_tokens(self.image_encoder, pixels)
        faces = conditioning.clip_face_tokens(self.image_encoder, pixels, face_boxes)
        return whole.to(device, dtype), faces[None].to(device, dtype)

    def encode_audio(self, audio: Sequence[np.ndarray], num_frames: int, fps: int, device, dtype) -> torch.Tensor:
        """[1, N, num_frames, 5, layers, C] windowed wav2vec2 features of each track."""
        features = conditioning.audio_windows(AudioFeatureEncoder(self.audio_encoder), audio, fps, num_frames)
        return features[None].to(device, dtype)

    # 3. ------------------------------------------------------------------------------------------
    def prepare_latents(self, regions: Sequence[torch.Tensor], known: torch.Tensor, num_frames: int,
                        generator: torch.Generator | None, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """One window's starting noise (float32 [1, 16, T, h, w]) and condition y ([1, 20, T, h, w]
        in `dtype`); `known` [1, 3, k, H, W]: its given frames (the reference image, or the frames
        carried over from the previous window)."""
        reference = reference_latents(self.vae, known.to(device), num_frames)
        condition = conditioning.condition_latents(regions, reference, num_frames, known_frames=known.shape[2])
        condition = condition.to(dtype)
        shape = (1, self.vae.config.z_dim, *condition.shape[2:])
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32), condition

    # 4. ------------------------------------------------------------------------------------------
    def predict_noise(self, tensors: dict, timestep: torch.Tensor, guidance_scale: float,
                      audio_guidance_scale: float | None) -> torch.Tensor:
        """The guided prediction: every guidance pass (`guidance_passes`) in one batched forward;
        uncond = negative prompt + zero audio."""
        passes = guidance_passes(guidance_scale, audio_guidance_scale)
        unconditional = int(guidance_scale != 1)  # the last pass: negative prompt, zero audio
        model_input = torch.cat([tensors["latents"].to(self.transformer.dtype), tensors["condition"]], dim=1)
        prediction = self.transformer(
            hidden_states=model_input.expand(passes, -1, -1, -1, -1),
            timestep=timestep.expand(passes),
            encoder_hidden_states=torch.cat([tensors["prompt_embeds"]] * (passes - unconditional)
                                            + [tensors["negative_prompt_embeds"]] * unconditional),
            encoder_hidden_states_image=tensors["image_embeds"].expand(passes, -1, -1),
            face_embeds=tensors["face_embeds"].expand(passes, -1, -1, -1),
            audio_embeds=tensors["audio_embeds"],
            face_token_masks=tensors["face_token_masks"].expand(passes, -1, -1, -1),
        ).sample.float()
        return combine_guidance(prediction, guidance_scale, audio_guidance_scale)

    def denoise(self, tensors: dict, num_inference_steps: int, guidance_scale: float,
                audio_guidance_scale: float | None, callback_on_step_end: Callable | None = None,
                callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)) -> dict:
        """The step loop of one window over `tensors` (the names of `_callback_tensor_inputs`);
        returns them with the denoised latents. After each step `callback_on_step_end(self, step,
        timestep, callback_kwargs)` gets the tensors named in `callback_on_step_end_tensor_inputs`,
        and the tensors of the dict it returns replace the loop's (diffusers' contract)."""
        tensors = dict(tensors)
        self.scheduler.set_timesteps(num_inference_steps, device=tensors["latents"].device)
        # Step caches (anytalker.acceleration.caches) start afresh each window; every transformer call
        # runs in a cache context, one per step for all the batched guidance passes.
        self.transformer._reset_stateful_cache()
        sigmas = getattr(self.scheduler, "sigmas", None)
        with self.progress_bar(total=num_inference_steps) as bar:
            bar.set_description(f"window {self.current_window + 1}/{self.num_windows}")
            for step, timestep in enumerate(self.scheduler.timesteps):
                if self.interrupt:
                    continue
                with self.transformer.cache_context(
                        "denoise", step_index=step, num_inference_steps=num_inference_steps, timestep=float(timestep),
                        sigma=float(sigmas[step]) if sigmas is not None else None):
                    noise_pred = self.predict_noise(tensors, timestep, guidance_scale, audio_guidance_scale)
                tensors["latents"] = self.scheduler.step(noise_pred, timestep, tensors["latents"], return_dict=False)[0]
                if callback_on_step_end is not None:
                    callback_kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                    outputs = callback_on_step_end(self, step, timestep, callback_kwargs) or {}
                    tensors.update({k: v for k, v in outputs.items() if k in self._callback_tensor_inputs})
                bar.update()
        return tensors

    # 5. ------------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """A window's latents [1, 16, T, h, w] -> frames float32 [3, F, H, W] in [-1, 1] on the CPU;
        with `reference` [1, 3, H, W], re-anchored on its colour statistics (later windows)."""
        frames = decode_latents(self.vae, latents.to(self.vae.dtype)).float().cpu()[0]
        return frames if reference is None else match_colour(frames, reference[0])

    @torch.no_grad()
    def __call__(
        self,
        image: np.ndarray,
        audio: Sequence[np.ndarray],
        face_boxes: Sequence[FaceBox],
        prompt: str = "",
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        fps: int = 24,
        num_inference_steps: int = 40,
        guidance_scale: float = 4.5,
        audio_guidance_scale: float | None = None,
        max_frames_per_window: int = 81,
        motion_frames: int = 5,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> AnyTalkerPipelineOutput:
        """Generates the talking video.

        Args:
            image: the reference image, uint8 RGB [H, W, 3], with one face per audio track.
            audio: aligned 16 kHz mono tracks of equal length, one per person (silence where that
                person does not speak); see `anytalker.audio` for loading and alignment.
            face_boxes: square face boxes in `image` pixels, in track order.
            guidance_scale / audio_guidance_scale: one scale (the release: 2 passes, unconditional =
                negative prompt + zero audio), or separate text and audio scales (3 passes).
            max_frames_per_window / motion_frames: long audio is generated in windows of at most
                this many frames (4n+1); each later window regenerates the last `motion_frames`
                frames of the previous one from their pixels, and is re-anchored on the reference
                image (CLIP tokens and colour statistics).
            callback_on_step_end / callback_on_step_end_tensor_inputs: diffusers' step callback
                (see `denoise`; names from `_callback_tensor_inputs`, default ["latents"]);
                `current_window` / `num_windows` say where it is.
        """
        start_time = time.perf_counter()
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        # 1. Check inputs
        self.check_inputs(image, audio, face_boxes, height, width, fps, num_inference_steps, guidance_scale,
                          audio_guidance_scale, max_frames_per_window, motion_frames,
                          callback_on_step_end_tensor_inputs)
        self._interrupt = False
        device, dtype = self._execution_device, self.transformer.dtype
        image_h, image_w = image.shape[:2]
        if height is None or width is None:
            height, width = choose_resolution(image_h, image_w,
                                              multiple=self.vae_scale_factor_spatial * self.patch_size[0])
        negative_prompt = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
        out_frames = frames_for_duration(np.asarray(audio[0]).shape[-1] / SAMPLE_RATE, fps)
        total_frames = latent_aligned(out_frames, self.vae_scale_factor_temporal)
        windows = plan_windows(total_frames, max_frames_per_window, motion_frames, self.vae_scale_factor_temporal)

        # 2. Encode the prompt, the images and the audio: shared by every window (identity is
        # re-anchored on the reference each time).
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(prompt, negative_prompt, device, dtype)
        pixels = conditioning.pixels(image)  # [1, 3, H, W]
        image_embeds, face_embeds = self.encode_image(pixels, face_boxes, device, dtype)
        audio_embeds = self.encode_audio(audio, total_frames, fps, device, dtype)
        # Each window takes a view of this [passes, N, F, ...] batch (sliced after concatenating): the
        # transformer's float rounding depends on the strides, and per-window contiguous copies moved
        # the outputs by up to 1.5e-5 (measured), so the layout stays as it was.
        audio_batch = torch.cat([audio_embeds] + [torch.zeros_like(audio_embeds)]
                                * (guidance_passes(guidance_scale, audio_guidance_scale) - 1))
        regions = conditioning.face_regions(face_boxes, image_h, image_w)
        latent_h, latent_w = height // self.vae_scale_factor_spatial, width // self.vae_scale_factor_spatial
        face_token_masks = conditioning.face_token_masks(regions, latent_h, latent_w, self.patch_size)
        shared = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds,
                  "image_embeds": image_embeds, "face_embeds": face_embeds,
                  "face_token_masks": face_token_masks[None].to(device, dtype)}
        reference = conditioning.resize_pixels(pixels, height, width)

        video = []  # generated frames [3, F, H, W] in [-1, 1], window by window
        carried = None
        self._num_windows = len(windows)
        for index, window in enumerate(windows):
            if self.interrupt:
                break
            self._current_window = index
            known = reference[:, :, None] if carried is None else carried[None]  # [1, 3, k, H, W]
            # 3. Prepare the window's noise and condition
            latents, condition = self.prepare_latents(regions, known, window.length, generator, device, dtype)
            # 4. Denoise
            tensors = self.denoise(
                {**shared, "latents": latents, "condition": condition,
                 "audio_embeds": audio_batch[:, :, window.start:window.start + window.length]},
                num_inference_steps, guidance_scale, audio_guidance_scale, callback_on_step_end,
                callback_on_step_end_tensor_inputs)
            shared = {name: tensors[name] for name in shared}  # a callback's replacements stay
            # 5. Decode (later windows re-anchored on the reference's colours)
            frames = self.decode(tensors["latents"], reference if index > 0 else None)
            carried = frames[:, -motion_frames:]
            video.append(frames[:, window.carried:])

        frames = torch.cat(video, dim=1)[:, :out_frames].permute(1, 0, 2, 3)  # [F, 3, H, W]
        if output_type == "np":
            frames = ((frames + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        info = {
            "height": height, "width": width, "fps": fps, "frames": out_frames, "generated_frames": total_frames,
            "windows": [vars(w) for w in windows], "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale, "audio_guidance_scale": audio_guidance_scale,
            "identities": len(face_boxes), "seconds": round(time.perf_counter() - start_time, 3),
        }
        self.maybe_free_model_hooks()
        return AnyTalkerPipelineOutput(frames=frames, info=info)

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
        with atomic_directory(target) as partial:
            self.save_pretrained(partial, **kwargs)
        return target
