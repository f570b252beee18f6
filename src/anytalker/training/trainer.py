"""`anytalker train CONFIG.yaml`: AnyTalker's two-stage training with accelerate.

The same command runs on one process, on N GPUs or several nodes (`accelerate launch` /
`torchrun`; FSDP or DeepSpeed come from the accelerate config). Every random choice of a step
(which samples, pairs or singles, mask enlargement, timesteps, noise) is a pure function of
(seed, step, position in the global batch), so a resumed run and a run on another number of
processes see exactly the same data and noise.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from .config import Config, load_config
from .examples import ConditionEncoder, choose_batch, collate, pair_example, single_example
from .initialization import init_from_wan, is_audio_face_parameter
from .shards import ShardIndex

CHECKPOINT_PREFIX = "checkpoint-"


def load_components(config: Config) -> dict:
    """Pipeline components for training: frozen encoders and the transformer to train."""
    from ..models import AnyTalkerTransformer
    from ..models.official_checkpoint import RELEASE_DIT_CONFIGS
    from ..pipeline.runner import ModelSettings, build_pipeline

    pipe = build_pipeline(ModelSettings(model=config.model.source, variant=config.model.variant, dtype="fp32",
                                        seed=config.model.seed), device="cpu")
    components = dict(pipe.components)
    if config.model.transformer:
        components["transformer"] = AnyTalkerTransformer.from_pretrained(config.model.transformer)
    elif config.model.init_from_wan:
        components["transformer"] = init_from_wan(config.model.init_from_wan, RELEASE_DIT_CONFIGS[config.model.variant],
                                                  config.train.seed)
    return components


def sigma_schedule(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Uniform u in [0, 1] -> flow-matching sigma with Wan's shift (more weight on high noise)."""
    return shift * u / (1 + (shift - 1) * u)


def timestep_weights(sigmas: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample loss weights; "bell" is the release scheduler's training weighting (a Gaussian
    bump over the 1000 timesteps, centred at the middle, normalised to mean 1 over them)."""
    if kind == "none":
        return torch.ones_like(sigmas)
    steps = torch.arange(1000, dtype=torch.float64)
    bell = torch.exp(-2 * ((steps - 500) / 1000) ** 2)
    bell = bell / bell.mean()
    return bell[(sigmas.double() * 999).round().long()].to(sigmas.dtype)


def flow_matching_loss(transformer, batch: dict, generators: list[torch.Generator], shift: float,
                       weighting: str) -> torch.Tensor:
    """MSE between the predicted flow and (noise - x0) at x_t = (1 - sigma) x0 + sigma * noise."""
    latents = batch["latents"]
    noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators]).to(latents)
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(latents)
    sigmas = sigma_schedule(u, shift)
    sigma = sigmas.view(-1, 1, 1, 1, 1)
    noisy = (1 - sigma) * latents + sigma * noise
    prediction = transformer(
        hidden_states=torch.cat([noisy, batch["y"]], dim=1), timestep=sigmas * 1000,
        encoder_hidden_states=batch["text"], encoder_hidden_states_image=batch["clip_image"],
        face_embeds=batch["faces"], audio_embeds=batch["audio"], face_token_masks=batch["token_masks"],
    ).sample
    per_sample = ((prediction.float() - (noise - latents).float()) ** 2).flatten(1).mean(1)
    return (per_sample * timestep_weights(sigmas, weighting)).mean()


def _generator(seed: int, step: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, step, position)) & 0x7FFF_FFFF_FFFF)


def _checkpoints(output: Path) -> list[Path]:
    return sorted(output.glob(f"{CHECKPOINT_PREFIX}*"), key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def select_trainable(transformer, mode: str, lora_rank: int):
    """Freezes what the config does not train; returns the trainable parameters."""
    if mode == "lora":
        from peft import LoraConfig

        transformer.requires_grad_(False)
        targets = ["to_q", "to_k", "to_v", "to_out.0", "to_k_face", "to_v_face", "to_k_audio", "to_v_audio",
                   "to_kv"]
        transformer.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=targets,
                                           init_lora_weights="gaussian"))
    else:
        for name, param in transformer.named_parameters():
            param.requires_grad_(mode == "all" or is_audio_face_parameter(name))
    return [p for p in transformer.parameters() if p.requires_grad]


class Trainer:
    def __init__(self, config: Config | str | os.PathLike | dict, progress: bool = True):
        self.config = config if isinstance(config, Config) else load_config(config)
        cfg = self.config
        self.output = Path(cfg.output.dir)
        # cpu=True without a GPU: only then does accelerate join torchrun's CPU processes (gloo).
        self.accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=not torch.cuda.is_available(),
                                       gradient_accumulation_steps=cfg.train.gradient_accumulation_steps)
        world = self.accelerator.num_processes * cfg.train.gradient_accumulation_steps
        if cfg.train.batch_size % world:
            raise ValueError(f"batch_size {cfg.train.batch_size} is not divisible by processes x accumulation "
                             f"steps = {world}")
        self.progress = progress and self.accelerator.is_main_process
        set_seed(cfg.train.seed)
        self.index = ShardIndex.from_dir(cfg.data.shards)
        self.pairable = [i for i, entry in enumerate(self.index.entries) if "half_frames.npy" in entry[2]]
        components = load_components(cfg)
        self.components = components
        self.transformer = components["transformer"].train()
        self.encoder = ConditionEncoder(components["vae"], components["text_encoder"], components["tokenizer"],
                                        components["image_encoder"], components["audio_encoder"],
                                        text_len=self.transformer.config.text_len, fps=cfg.data.fps)
        if cfg.train.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        params = select_trainable(self.transformer, cfg.train.trainable, cfg.train.lora_rank)
        from diffusers.optimization import get_scheduler

        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
        self.lr_scheduler = get_scheduler(cfg.train.lr_scheduler, self.optimizer,
                                          num_warmup_steps=cfg.train.warmup_steps, num_training_steps=cfg.train.max_steps)
        self.ema = None
        if cfg.train.ema_decay:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(params, decay=cfg.train.ema_decay)
            self.accelerator.register_for_checkpointing(self.ema)
        self.transformer, self.optimizer, self.lr_scheduler = self.accelerator.prepare(
            self.transformer, self.optimizer, self.lr_scheduler)
        self.step = 0

    # --- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Model, optimizer, LR scheduler, RNG states and the step, written to a temporary folder
        and renamed into place, so a crash never leaves a half-written checkpoint."""
        acc = self.accelerator
        final = self.output / f"{CHECKPOINT_PREFIX}{self.step}"
        partial = self.output / f".{final.name}.partial"
        if acc.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)  # before any rank writes its RNG state into it
        acc.wait_for_everyone()
        acc.save_state(str(partial))
        acc.wait_for_everyone()  # every rank has written its RNG state before the rename
        if acc.is_main_process:
            (partial / "trainer_state.json").write_text(json.dumps({"step": self.step}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            for old in _checkpoints(self.output)[:-self.config.output.keep_checkpoints]:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def resume(self) -> int:
        """Loads the newest complete checkpoint of the output folder; returns its step (0 if none)."""
        checkpoints = _checkpoints(self.output)
        if not checkpoints:
            return 0
        self.accelerator.load_state(str(checkpoints[-1]))
        self.step = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["step"]
        return self.step

    # --- one step ---------------------------------------------------------------------------
    def _local_batch(self, step: int) -> tuple[str, dict, int]:
        cfg = self.config
        kind, chosen = choose_batch(len(self.index), self.pairable, step, cfg.train.batch_size, cfg.data.stage,
                                    cfg.data.concat_probability, cfg.train.seed)
        per_example = 2 if kind == "pairs" else 1
        acc = self.accelerator
        per_rank = cfg.train.batch_size // acc.num_processes
        first = acc.process_index * per_rank
        examples = []
        for position in range(first, first + per_rank):
            picked = [self.index.read(i) for i in chosen[position * per_example:(position + 1) * per_example]]
            example = pair_example(*picked, prompt=cfg.data.pair_prompt) if kind == "pairs" \
                else single_example(picked[0], cfg.data.single_view)
            low, high = cfg.data.mask_enlarge
            enlarge = random.Random(f"{cfg.train.seed}:{step}:{position}:mask").uniform(low, high)
            examples.append(self.encoder.encode(example, mask_enlarge=enlarge))
        return kind, collate(examples), first

    def train_step(self) -> tuple[float, str]:
        cfg, acc = self.config, self.accelerator
        kind, batch, first = self._local_batch(self.step)
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        accumulation = cfg.train.gradient_accumulation_steps
        micro = batch["latents"].shape[0] // accumulation
        total = 0.0
        for m in range(accumulation):
            part = {k: v[m * micro:(m + 1) * micro] for k, v in batch.items()}
            generators = [_generator(cfg.train.seed, self.step, first + m * micro + j) for j in range(micro)]
            with acc.accumulate(self.transformer):
                loss = flow_matching_loss(self.transformer, part, generators, cfg.train.flow_shift,
                                          cfg.train.timestep_weighting)
                acc.backward(loss)
                if acc.sync_gradients and cfg.train.max_grad_norm:
                    acc.clip_grad_norm_(self.transformer.parameters(), cfg.train.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad()
            total += loss.detach().float().item() / accumulation
        if self.ema is not None:
            self.ema.step([p for p in self.transformer.parameters() if p.requires_grad])
        self.step += 1
        return acc.reduce(torch.tensor(total, device=acc.device), "mean").item(), kind

    # --- the loop ---------------------------------------------------------------------------
    def train(self, resume: bool = False, stop_after: int | None = None) -> Path:
        cfg, acc = self.config, self.accelerator
        self.output.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            (self.output / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        if resume:
            self.resume()
        last = cfg.train.max_steps if stop_after is None else min(cfg.train.max_steps, stop_after)
        log = _Logger(self.output, cfg.output.log_with, acc.is_main_process, resume)
        bar = tqdm(total=cfg.train.max_steps, initial=self.step, desc="train", disable=not self.progress)
        while self.step < last:
            start = time.perf_counter()
            loss, kind = self.train_step()
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {self.step}")
            rate = cfg.train.batch_size / (time.perf_counter() - start)
            if self.step % cfg.output.log_every == 0:
                log.write(step=self.step, loss=loss, lr=self.lr_scheduler.get_last_lr()[0], kind=kind,
                          samples_per_s=rate)
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % cfg.output.checkpoint_every == 0 or self.step == cfg.train.max_steps:
                self.save_checkpoint()
            if cfg.output.validate_every and self.step % cfg.output.validate_every == 0:
                self.validate()
        bar.close()
        log.close()
        return self.save_model() if self.step >= cfg.train.max_steps else self.output

    def unwrapped_transformer(self):
        return self.accelerator.unwrap_model(self.transformer)

    def save_model(self) -> Path:
        """The trained transformer in diffusers format (`output/transformer`, and EMA weights in
        `output/transformer_ema`), loadable as a pipeline component or a later stage's start."""
        acc = self.accelerator
        acc.wait_for_everyone()
        target = self.output / "transformer"
        if acc.is_main_process:
            model = self.unwrapped_transformer()
            if self.config.train.trainable == "lora":  # ship plain weights: the adapters merged in
                model.fuse_lora()
                model.unload_lora()
            model.save_pretrained(target)
            if self.ema is not None:
                self.ema.store(model.parameters())
                self.ema.copy_to([p for p in model.parameters() if p.requires_grad])
                model.save_pretrained(self.output / "transformer_ema")
                self.ema.restore(model.parameters())
        acc.wait_for_everyone()
        return target

    @torch.no_grad()
    def validate(self) -> Path | None:
        """Generates a short clip for a fixed validation sample (the dataset's first) and saves it."""
        if not self.accelerator.is_main_process:
            return None
        from ..faces.detection import FaceBox
        from ..pipeline import AnyTalkerPipeline
        from ..video.io import write_video

        sample = self.index.read(0)
        model = self.unwrapped_transformer()
        model.eval()
        pipe = AnyTalkerPipeline(**{**self.components, "transformer": model})
        pipe.set_progress_bar_config(disable=True)
        boxes = [FaceBox(*p["box"]) for p in sample.meta["persons"]]
        result = pipe(sample.frames[0], sample.audio, boxes, prompt=sample.meta.get("caption", ""),
                      height=sample.meta["height"], width=sample.meta["width"], fps=self.config.data.fps,
                      num_inference_steps=self.config.output.validation_steps,
                      generator=torch.Generator().manual_seed(self.config.train.seed))
        model.train()
        from ..audio.alignment import mix_tracks

        path = self.output / "validation" / f"step-{self.step:06d}.mp4"
        write_video(path, result.frames, self.config.data.fps, audio=mix_tracks(sample.audio), sample_rate=16000)
        return path


class _Logger:
    """CSV log of the training curve (and TensorBoard when asked for and installed)."""

    FIELDS = ("step", "loss", "lr", "kind", "samples_per_s")

    def __init__(self, output: Path, log_with: str, active: bool, append: bool):
        self.active, self.tb = active, None
        if not active:
            return
        path = output / "log.csv"
        fresh = not (append and path.is_file())
        self.handle = open(path, "w" if fresh else "a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=self.FIELDS)
        if fresh:
            self.writer.writeheader()
        if log_with == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(output / "tensorboard"))

    def write(self, **row):
        if not self.active:
            return
        self.writer.writerow(row)
        self.handle.flush()
        if self.tb is not None:
            for key in ("loss", "lr", "samples_per_s"):
                self.tb.add_scalar(f"train/{key}", row[key], row["step"])

    def close(self):
        if self.active:
            self.handle.close()
            if self.tb is not None:
                self.tb.close()
