"""AnyTalkerPipeline: the diffusers pipeline that composes AnyTalker's components."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, DiffusionPipeline, UniPCMultistepScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPVisionModel, UMT5EncoderModel, Wav2Vec2Model

from ..encoders.image import encode_clip_image
from ..encoders.text import encode_prompts
from ..encoders.vae import decode_latents, encode_video
from ..encoders.wav2vec import WAV2VEC_SAMPLE_RATE, AudioFeatureEncoder
from ..faces.detection import FaceBox
from ..faces.masks import box_mask, expand_mask, mask_channels, token_mask
from ..models import AnyTalkerTransformer
from ..utils.atomic import atomic_directory
from .release import load_release_components, release_folder
from .schedule import choose_resolution, frames_for_duration, latent_aligned, plan_windows

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


def combine_guidance(predictions: torch.Tensor, guidance_scale: float, audio_guidance_scale: float | None):
    """Classifier-free guidance over the passes of one batched forward.

    One scale (the release): passes [cond, uncond]; uncond = negative prompt + zero audio.
    Separate scales: passes [cond, text only (zero audio), uncond]:
    uncond + s_text * (text - uncond) + s_audio * (cond - text).
    """
    if audio_guidance_scale is None:
        cond, uncond = predictions.chunk(2)
        return uncond + guidance_scale * (cond - uncond)
    cond, text, uncond = predictions.chunk(3)
    return uncond + guidance_scale * (text - uncond) + audio_guidance_scale * (cond - text)


def reference_latents(vae: AutoencoderKLWan, known_frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The I2V condition latent: VAE encoding of the known frames [B, 3, k, H, W] in [-1, 1]
    followed by zeros up to `num_frames` (the release's reference frame + zeros)."""
    batch, channels, known, height, width = known_frames.shape
    video = known_frames.new_zeros(batch, channels, num_frames, height, width)
    video[:, :, :known] = known_frames
    return encode_video(vae, video)


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

    @property
    def _device(self) -> torch.device:
        return self._execution_device

    @property
    def current_window(self) -> int:
        """Index of the window being denoised (for step callbacks)."""
        return getattr(self, "_current_window", 0)

    @property
    def num_windows(self) -> int:
        """Windows of the current call (long audio is generated in several)."""
        return getattr(self, "_num_windows", 1)

    def check_inputs(self, image: np.ndarray, audio: Sequence[np.ndarray], face_boxes: Sequence[FaceBox],
                     guidance_scale: float, max_frames_per_window: int, motion_frames: int) -> None:
        """Every input error, before any model runs."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("image must be a uint8 RGB array [H, W, 3]")
        if len(audio) == 0:
            raise ValueError("need at least one audio track")
        if len(audio) != len(face_boxes):
            raise ValueError(f"{len(audio)} audio tracks but {len(face_boxes)} face boxes: one face per track")
        lengths = {int(np.asarray(track).shape[-1]) for track in audio}
        if len(lengths) != 1 or any(np.asarray(track).ndim != 1 for track in audio):
            raise ValueError("audio tracks must be aligned 1-D 16 kHz waveforms of equal length (see anytalker.audio)")
        height, width = image.shape[:2]
        for index, box in enumerate(face_boxes):
            if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
                raise ValueError(f"face box {index} {box.as_tuple()} lies outside the {width}x{height} image")
        if guidance_scale < 1:
            raise ValueError(f"guidance_scale must be >= 1, got {guidance_scale}")
        for name, value in (("max_frames_per_window", max_frames_per_window), ("motion_frames", motion_frames)):
            if value < 1 or (value - 1) % 4:
                raise ValueError(f"{name} must be 4n+1, got {value}")
        if motion_frames >= max_frames_per_window:
            raise ValueError("motion_frames must be smaller than max_frames_per_window")

    def encode_prompt(self, prompt: str, negative_prompt: str, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt, negative) umT5 features, each [1, L, 4096], zero-padded to a common length
        (the transformer zero-pads to text_len anyway, so padding here changes nothing)."""
        features = encode_prompts(self.text_encoder, self.tokenizer, [prompt, negative_prompt],
                                  max_length=self.transformer.config.text_len)
        length = max(f.shape[0] for f in features)
        padded = [F.pad(f, (0, 0, 0, length - f.shape[0]))[None] for f in features]
        return padded[0].to(device, dtype), padded[1].to(device, dtype)

    def encode_images(self, image: torch.Tensor, face_boxes: Sequence[FaceBox], device, dtype):
        """CLIP tokens of the whole image [1, 257, D] and of each square face crop [1, N, 257, D]."""
        crops = [image[:, :, int(b.y0):int(b.y1), int(b.x0):int(b.x1)] for b in face_boxes]
        whole = encode_clip_image(self.image_encoder, image)
        faces = torch.cat([encode_clip_image(self.image_encoder, crop) for crop in crops])
        return whole.to(device, dtype), faces[None].to(device, dtype)

    def encode_audio(self, audio: Sequence[np.ndarray], num_frames: int, fps: int, device, dtype) -> torch.Tensor:
        """[1, N, num_frames, 5, layers, C] windowed wav2vec2 features of each track."""
        encoder = AudioFeatureEncoder(self.audio_encoder)
        features = [encoder(torch.as_tensor(np.asarray(track, dtype=np.float32)), fps=fps, num_frames=num_frames)
                    for track in audio]
        return torch.stack(features)[None].to(device, dtype)

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
        """
        start_time = time.perf_counter()
        self.check_inputs(image, audio, face_boxes, guidance_scale, max_frames_per_window, motion_frames)
        device = self._device
        dtype = self.transformer.dtype
        image_h, image_w = image.shape[:2]
        if height is None or width is None:
            height, width = choose_resolution(image_h, image_w)
        elif height % 16 or width % 16:
            raise ValueError(f"height and width must be multiples of 16, got {height}x{width}")
        negative_prompt = DEFAULT_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt

        duration = np.asarray(audio[0]).shape[-1] / WAV2VEC_SAMPLE_RATE
        out_frames = frames_for_duration(duration, fps)
        total_frames = latent_aligned(out_frames)
        windows = plan_windows(total_frames, max_frames_per_window, motion_frames)

        # Conditioning shared by every window (identity is re-anchored on the reference each time).
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # [1, 3, H, W]
        prompt_embeds, negative_embeds = self.encode_prompt(prompt, negative_prompt, device, dtype)
        image_embeds, face_embeds = self.encode_images(pixels, face_boxes, device, dtype)
        audio_embeds = self.encode_audio(audio, total_frames, fps, device, dtype)
        expanded = [expand_mask(box_mask(box.as_tuple(), image_h, image_w)) for box in face_boxes]
        reference = F.interpolate(pixels, size=(height, width), mode="bicubic", align_corners=False).clamp(-1, 1)

        num_ids = len(face_boxes)
        passes = 2 if audio_guidance_scale is None else 3
        zero_audio = torch.zeros_like(audio_embeds)
        text_batch = torch.cat([prompt_embeds] * (passes - 1) + [negative_embeds])
        audio_batch = torch.cat([audio_embeds] + [zero_audio] * (passes - 1))
        stride_s = 8  # VAE spatial stride
        latent_h, latent_w = height // stride_s, width // stride_s
        tokens = torch.stack([token_mask(m, latent_h // 2, latent_w // 2) for m in expanded])[None].to(device, dtype)

        video = []  # generated frames [3, F, H, W] in [-1, 1], window by window
        carried = None
        self._num_windows = len(windows)
        for index, window in enumerate(windows):
            self._current_window = index
            known = reference[:, :, None] if carried is None else carried[None]  # [1, 3, k, H, W]
            y_mask = mask_channels(expanded, window.length, latent_h, latent_w, known_frames=known.shape[2])[None]
            y = torch.cat([y_mask.to(device), reference_latents(self.vae, known.to(device), window.length)], dim=1)
            y = y.to(dtype)
            latents = randn_tensor(y[:, 4:].shape, generator=generator, device=device, dtype=torch.float32)
            window_audio = audio_batch[:, :, window.start:window.start + window.length]

            self.scheduler.set_timesteps(num_inference_steps, device=device)
            with self.progress_bar(total=num_inference_steps) as bar:
                bar.set_description(f"window {index + 1}/{len(windows)}")
                for step, timestep in enumerate(self.scheduler.timesteps):
                    model_input = torch.cat([latents.to(dtype), y], dim=1).expand(passes, -1, -1, -1, -1)
                    prediction = self.transformer(
                        hidden_states=model_input,
                        timestep=timestep.expand(passes),
                        encoder_hidden_states=text_batch,
                        encoder_hidden_states_image=image_embeds.expand(passes, -1, -1),
                        face_embeds=face_embeds.expand(passes, -1, -1, -1),
                        audio_embeds=window_audio,
                        face_token_masks=tokens.expand(passes, num_ids, -1, -1),
                    ).sample.float()
                    noise_pred = combine_guidance(prediction, guidance_scale, audio_guidance_scale)
                    latents = self.scheduler.step(noise_pred, timestep, latents, return_dict=False)[0]
                    if callback_on_step_end is not None:
                        callback_on_step_end(self, step, timestep, {"latents": latents, "window": index})
                    bar.update()
            frames = decode_latents(self.vae, latents.to(self.vae.dtype)).float().cpu()[0]  # [3, F, H, W]
            if index > 0:
                frames = match_colour(frames, reference[0])
            carried = frames[:, -motion_frames:]
            video.append(frames[:, window.carried:])
        frames = torch.cat(video, dim=1)[:, :out_frames].permute(1, 0, 2, 3)  # [F, 3, H, W]
        if output_type == "np":
            frames = ((frames + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
        info = {
            "height": height, "width": width, "fps": fps, "frames": out_frames, "generated_frames": total_frames,
            "windows": [vars(w) for w in windows], "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale, "audio_guidance_scale": audio_guidance_scale,
            "identities": num_ids, "seconds": round(time.perf_counter() - start_time, 3),
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
