"""Training a (tiny) Wan VAE from scratch: image pre-training, a short video fine-tune, and latent
statistics re-estimated from the trained encoder.

The model is diffusers' `AutoencoderKLWan` at any base width (`diffusers_vae_config({"dim": 8})`
is ~0.9 M parameters), so a trained VAE drops into `AnyTalkerPipeline` like the released one.

1. Image phase (`image_steps`): single frames (F = 1, the causal VAE's first-chunk path), random
   crops of `crop` pixels, batch `image_batch`. This trains the spatial path.
2. Video phase (`video_steps`): clips of `video_frames` (4n+1) frames, batch `video_batch`. This
   trains the temporal (causal 3D) convolutions and the 4x temporal down/up-sampling.
3. Latent statistics: the per-channel mean and std of the encoder's posterior mean over clips of
   the data are written into the config (`latents_mean`, `latents_std`), so `normalize_latents`
   gives the diffusion model unit-scale latents, as the release's hard-coded statistics do for
   the released VAE.

`build_vae` initialises the model for this schedule (see its docstring): without it a dim-8 VAE
stalls on the mean-colour plateau, and the video phase would start from random temporal
convolutions. Image-phase steps run every causal convolution as a 2D one (`first_frame_fast_path`,
the same numbers for a third of the work).

Loss: weighted L1 + `mse_weight` x weighted MSE + `kl_weight` x KL (per latent element)
+ `temporal_weight` x L1 of the frame-to-frame differences, on the decoder's unclamped output of
the posterior mean. Optional per-clip weight maps (e.g. 1 + face_weight inside face boxes)
put the capacity where it matters. Every batch (and the optional latent noise) is a pure function
of (seed, phase, step), so a resumed run continues exactly where it stopped: `train_vae` checkpoints
(model, optimizer, step) atomically every `checkpoint_every` steps and resumes from it.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from ..encoders.vae import decode_latents, decode_unclamped, diffusers_vae_config, encode_video
from ..utils.atomic import atomic_write

__all__ = ["FrameSet", "VAETrainSettings", "build_vae", "estimate_latent_statistics", "first_frame_fast_path",
           "psnr", "reconstruct", "set_latent_statistics", "train_vae", "vae_loss"]

CHECKPOINT = "vae_checkpoint.pt"
PHASES = ("image", "video")
TEMPORAL_DOWNSAMPLES = ("newest", "average")


def _check_temporal_downsample(value: str) -> None:
    if value not in TEMPORAL_DOWNSAMPLES:
        raise ValueError(f"temporal_downsample must be one of {TEMPORAL_DOWNSAMPLES}, got {value!r}")


@dataclass
class VAETrainSettings:
    dim: int = 8                      # base width of AutoencoderKLWan
    image_steps: int = 800
    image_batch: int = 12
    video_steps: int = 250
    video_batch: int = 2
    video_frames: int = 9             # 4n+1
    crop: tuple[int, int] = (64, 64)  # (height, width) of the training crops; (0, 0): whole frames
    learning_rate: float = 1e-3       # image phase (linear warm-up, cosine decay to 10%)
    video_learning_rate: float = 3e-4
    warmup_steps: int = 30
    weight_decay: float = 0.0
    mse_weight: float = 0.5
    kl_weight: float = 1e-4           # per latent element (keeps the latents bounded)
    latent_noise: float = 0.0         # noise added to the latent while training, see vae_loss
    temporal_weight: float = 0.0      # L1 on frame-to-frame differences (video phase), see vae_loss
    temporal_downsample: str = "newest"  # build_vae's temporal downsamplers: "newest" or "average"
    max_grad_norm: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self):
        if (self.video_frames - 1) % 4 or self.video_frames < 5:
            raise ValueError(f"video_frames must be 4n+1 >= 5, got {self.video_frames}")
        self.crop = tuple(int(v) for v in self.crop)
        if any(v % 8 for v in self.crop):
            raise ValueError(f"crop must be multiples of 8 (the VAE's stride), got {self.crop}")
        _check_temporal_downsample(self.temporal_downsample)  # here too: before the clips load

    def to_dict(self) -> dict:
        return asdict(self)


class FrameSet:
    """Clips to train on: uint8 [F, H, W, 3] each (sizes may differ between clips), with an optional
    float32 [H, W] loss weight map per clip (default 1 everywhere)."""

    def __init__(self, clips: list[np.ndarray], weights: list[np.ndarray | None] | None = None):
        if not clips:
            raise ValueError("FrameSet needs at least one clip")
        self.clips = [np.ascontiguousarray(c) for c in clips]
        for clip in self.clips:
            if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
                raise ValueError(f"clips must be uint8 [F, H, W, 3], got {clip.dtype} {list(clip.shape)}")
        weights = weights or [None] * len(clips)
        self.weights = [np.ones(c.shape[1:3], np.float32) if w is None else np.asarray(w, np.float32)
                        for c, w in zip(self.clips, weights)]

    def __len__(self) -> int:
        return len(self.clips)

    def batch(self, rng: np.random.Generator, size: int, frames: int, crop: tuple[int, int]):
        """(pixels [B, 3, frames, h, w] in [-1, 1], weights [B, 1, 1, h, w]) of random crops."""
        pixels, weights = [], []
        candidates = [i for i, c in enumerate(self.clips) if c.shape[0] >= frames]
        if not candidates:
            raise ValueError(f"no clip has {frames} frames")
        for _ in range(size):
            index = candidates[int(rng.integers(len(candidates)))]
            clip, weight = self.clips[index], self.weights[index]
            height, width = clip.shape[1:3]
            ch, cw = (crop[0] or height), (crop[1] or width)
            if ch > height or cw > width:
                raise ValueError(f"crop {crop} is larger than a {height}x{width} clip")
            t0 = int(rng.integers(clip.shape[0] - frames + 1))
            y0, x0 = int(rng.integers(height - ch + 1)), int(rng.integers(width - cw + 1))
            pixels.append(clip[t0:t0 + frames, y0:y0 + ch, x0:x0 + cw])
            weights.append(weight[y0:y0 + ch, x0:x0 + cw])
        video = torch.from_numpy(np.stack(pixels)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        return video, torch.from_numpy(np.stack(weights))[:, None, None]


def build_vae(dim: int = 8, seed: int = 0, temporal_downsample: str = "newest") -> AutoencoderKLWan:
    """A randomly initialised Wan VAE of base width `dim` (z_dim 16, the Wan2.1 layout), set up to
    train from scratch, images first:

    - convolutions take He-normal weights and zero biases, and every residual block's last
      convolution starts at zero (each block is the identity at first). With PyTorch's default
      initialisation a dim-8 model sits on the mean-colour plateau (L1 ~0.28 in [-1, 1]) for
      hundreds of steps; with this one it leaves it in tens (measured on puppets);
    - every causal 3D convolution starts with its past taps at zero, the temporal downsamplers pick
      the newest frame and the temporal upsamplers copy their input to both output frames. So before
      the video phase, frames are coded independently and a latent frame decodes to its group's
      newest frame repeated: the video phase starts from the image phase's quality (a still video
      reconstructs exactly as its frame does in image mode) instead of from noise.

    `temporal_downsample="average"` starts the encoder's temporal downsamplers as the mean of the
    two frames they merge instead of the newer one. A still video codes the same either way; a
    moving one keeps every frame's share in its latent frame. Measured on puppets (fine-tuning the
    bundled VAE, docs/puppets-amplitude.md section 5): "newest" trains to ramps that smear a mouth's
    onset (amplitude 0.70 of the truth's after 1500 steps), "average" to 0.84 after 800.
    """
    _check_temporal_downsample(temporal_downsample)
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample, WanResidualBlock

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**diffusers_vae_config({"dim": dim}))
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                torch.nn.init.zeros_(module.bias)
        for module in vae.modules():
            if isinstance(module, WanResidualBlock):
                module.conv2.weight.zero_()
            if isinstance(module, WanCausalConv3d) and module.kernel_size[0] > 1:
                module.weight[:, :, :-1] = 0
        for module in vae.modules():  # after the loop above, which visits time_conv after its resampler
            if isinstance(module, WanResample) and hasattr(module, "time_conv"):
                weight = module.time_conv.weight  # [out, in, 3, 1, 1]
                weight.zero_()
                eye = torch.eye(weight.shape[1])
                if module.mode == "downsample3d" and temporal_downsample == "average":
                    weight[:, :, -2:, 0, 0] = 0.5 * eye[:, :, None]
                    continue
                for first in range(0, weight.shape[0], weight.shape[1]):  # 1 copy (down) or 2 (up)
                    weight[first:first + weight.shape[1], :, -1, 0, 0] = eye
    return vae


def vae_loss(vae: AutoencoderKLWan, pixels: torch.Tensor, weights: torch.Tensor, settings: VAETrainSettings,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """(loss, parts) of one batch: the posterior mean is decoded and compared with the input.

    The mean, not a sample: the pipeline encodes with the posterior mode, and sampling from the
    start collapses the posterior (the initial std of 1 drowns the signal, so the decoder learns
    to ignore the latent). `latent_noise` > 0 adds that much Gaussian noise to the latent (in
    units of the latent's own batch std), which makes the decoder tolerant of small errors in
    the latents a diffusion model produces. `temporal_weight` > 0 adds an L1 loss on the
    frame-to-frame differences (output vs input), unweighted: it puts the change inside a latent
    frame where the input has it, and keeps the still background from jumping at latent seams.
    """
    posterior = vae.encode(pixels).latent_dist
    z = posterior.mean
    if settings.latent_noise > 0:
        scale = settings.latent_noise * z.detach().std(dim=(0, 2, 3, 4), keepdim=True)
        z = z + scale * torch.randn(z.shape, generator=generator)
    out = decode_unclamped(vae, z)
    weights = weights.expand_as(out)
    norm = weights.mean()
    l1 = ((out - pixels).abs() * weights).mean() / norm
    mse = (((out - pixels) ** 2) * weights).mean() / norm
    kl = 0.5 * (posterior.mean**2 + posterior.var - 1.0 - posterior.logvar).mean()
    loss = l1 + settings.mse_weight * mse + settings.kl_weight * kl
    temporal = out.new_zeros(())
    if settings.temporal_weight > 0 and pixels.shape[2] > 1:
        temporal = (out.diff(dim=2) - pixels.diff(dim=2)).abs().mean()
        loss = loss + settings.temporal_weight * temporal
    return loss, {"l1": float(l1.detach()), "mse": float(mse.detach()), "kl": float(kl.detach()),
                  "temporal": float(temporal.detach())}


def _first_frame_conv(conv, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    """WanCausalConv3d.forward, with the case of one frame and no cache done as a 2D convolution.

    A causal convolution over one frame sees the frame and `kt - 1` zero frames before it: only the
    kernel's last temporal slice meets data. The 2D convolution with that slice gives the same
    values (and gradients) for a third of the work of the 3D one on the zero-padded input.
    """
    if x.shape[2] == 1 and (cache_x is None or conv._padding[4] == 0) and conv._padding[4] == conv.kernel_size[0] - 1 \
            and conv.stride[0] == 1:
        y = F.conv2d(F.pad(x[:, :, 0], conv._padding[:4]), conv.weight[:, :, -1], conv.bias, stride=conv.stride[1:])
        return y[:, :, None]
    return type(conv).forward(conv, x, cache_x)


class first_frame_fast_path:
    """Context manager: every causal convolution of `vae` takes `_first_frame_conv` (training speed;
    the outputs are those of the plain forward up to float rounding)."""

    def __init__(self, vae: AutoencoderKLWan):
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.convs = [m for m in vae.modules() if isinstance(m, WanCausalConv3d)]

    def __enter__(self):
        for conv in self.convs:
            conv.forward = functools.partial(_first_frame_conv, conv)
        return self

    def __exit__(self, *exc):
        for conv in self.convs:
            del conv.forward


def _learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _save_checkpoint(path: Path, vae, optimizer, phase: str, step: int) -> None:
    with atomic_write(path) as tmp:
        torch.save({"vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "phase": phase, "step": step,
                    "config": dict(vae.config)}, tmp)


def train_vae(frames: FrameSet, out_dir: str | os.PathLike, settings: VAETrainSettings | None = None,
              progress: bool = True, vae: AutoencoderKLWan | None = None,
              video_frames: FrameSet | None = None) -> AutoencoderKLWan:
    """Trains (or resumes training) a VAE on `frames`; returns it in eval mode. The video phase
    trains on `video_frames` when given (e.g. the same clips with weight maps for the moving pixels).

    out_dir gets `vae_checkpoint.pt` (model + optimizer + position, written atomically) and
    `vae_log.csv` (one row per step). The latent statistics are NOT set here: call
    `estimate_latent_statistics` + `set_latent_statistics` on the result.
    """
    from tqdm import tqdm

    settings = settings or VAETrainSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vae = vae if vae is not None else build_vae(settings.dim, settings.seed, settings.temporal_downsample)
    vae.train()
    # Weight decay off by default: RMS-norm gains and biases are all this model has besides convs.
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    phase_index, step = 0, 0
    checkpoint = out / CHECKPOINT
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        phase_index, step = PHASES.index(state["phase"]), state["step"]
    log_path = out / "vae_log.csv"
    fresh_log = not log_path.is_file() or (phase_index == 0 and step == 0)
    if not fresh_log:  # rows written after the checkpoint are redone: drop them
        rows = log_path.read_text().splitlines()
        kept = [rows[0]] + [row for row in rows[1:] if (PHASES.index(row.split(",")[0]), int(row.split(",")[1]))
                            <= (phase_index, step)]
        log_path.write_text("\n".join(kept) + "\n")
    with open(log_path, "w" if fresh_log else "a", newline="") as handle:
        writer = csv.writer(handle)
        if fresh_log:
            writer.writerow(["phase", "step", "loss", "l1", "mse", "kl", "temporal", "lr", "seconds"])
        plan = [("image", frames, settings.image_steps, settings.image_batch, 1, settings.learning_rate),
                ("video", video_frames or frames, settings.video_steps, settings.video_batch, settings.video_frames,
                 settings.video_learning_rate)]
        for index in range(phase_index, len(plan)):
            name, source, steps, batch, num_frames, peak = plan[index]
            if index > phase_index:
                step = 0
            bar = tqdm(total=steps, initial=step, desc=f"vae {name}", disable=not progress)
            while step < steps:
                start = time.perf_counter()
                lr = _learning_rate(step, steps, peak, settings.warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                rng = np.random.default_rng([settings.seed, index, step])
                pixels, weights = source.batch(rng, batch, num_frames, settings.crop)
                generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
                with first_frame_fast_path(vae):
                    loss, parts = vae_loss(vae, pixels, weights, settings, generator)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"VAE loss became {loss.item()} at {name} step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if settings.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(vae.parameters(), settings.max_grad_norm)
                optimizer.step()
                step += 1
                writer.writerow([name, step, f"{loss.item():.6f}", f"{parts['l1']:.6f}", f"{parts['mse']:.6f}",
                                 f"{parts['kl']:.4f}", f"{parts['temporal']:.6f}", f"{lr:.3e}",
                                 f"{time.perf_counter() - start:.3f}"])
                handle.flush()
                bar.update()
                bar.set_postfix(l1=f"{parts['l1']:.4f}")
                if step % settings.checkpoint_every == 0 or step == steps:
                    done = step == steps and index + 1 < len(plan)
                    # A finished phase is recorded as step 0 of the next one.
                    _save_checkpoint(checkpoint, vae, optimizer, plan[index + 1][0] if done else name,
                                     0 if done else step)
            bar.close()
    return vae.eval()


@torch.no_grad()
def estimate_latent_statistics(vae: AutoencoderKLWan, clips: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) of the encoder's posterior mean over `clips` (uint8 [F, H, W, 3],
    4n+1 frames), pooled over every latent position: what `normalize_latents` should remove."""
    total = total_sq = None
    count = 0
    vae.eval()
    for clip in clips:
        pixels = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        mu = vae.encode(pixels).latent_dist.mode().double()  # [1, C, T, h, w]
        flat = mu.transpose(0, 1).flatten(1)
        total = flat.sum(1) if total is None else total + flat.sum(1)
        total_sq = (flat**2).sum(1) if total_sq is None else total_sq + (flat**2).sum(1)
        count += flat.shape[1]
    if not count:
        raise ValueError("no clips to estimate latent statistics from")
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return [float(v) for v in mean], [float(v) for v in std]


def set_latent_statistics(vae: AutoencoderKLWan, mean, std) -> None:
    """Stores the statistics in the model's config (so `save_pretrained` writes them)."""
    if len(mean) != vae.config.z_dim or len(std) != vae.config.z_dim:
        raise ValueError(f"need {vae.config.z_dim} means and stds, got {len(mean)} and {len(std)}")
    if min(std) <= 0:
        raise ValueError("latent stds must be positive")
    vae.register_to_config(latents_mean=[float(v) for v in mean], latents_std=[float(v) for v in std])


@torch.no_grad()
def reconstruct(vae: AutoencoderKLWan, frames: np.ndarray) -> np.ndarray:
    """uint8 [F, H, W, 3] (F = 4n+1) -> the VAE's reconstruction, uint8, through the same
    encode_video / decode_latents the pipeline uses."""
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    video = decode_latents(vae, encode_video(vae, pixels))[0]
    return ((video.float() + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 3, 0).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def write_metrics(path: str | os.PathLike, metrics: dict) -> None:
    Path(path).write_text(json.dumps(metrics, indent=1))
