"""`anytalker train CONFIG.yaml`: AnyTalker's two-stage training with accelerate.

The same command runs on one process, on N GPUs or several nodes (`accelerate launch` /
`torchrun`; FSDP or DeepSpeed come from the accelerate config). Every random choice of a step
(which samples, pairs or singles, mask enlargement, timesteps, noise) is a pure function of
(seed, step, position in the global batch), so a resumed run and a run on another number of
processes see exactly the same data and noise.

The trainer only wires the parts (as torchtitan's): data (`shards`, `examples`), the objective
(`loss`), `checkpointing`, the curve (`metrics_log`), and validation clips through the generation
API (`anytalker.pipeline.runner`). Its stages: `batch` (this process's share of a step's examples,
encoded) -> `forward_backward` (loss of a micro-batch, backward) -> `train_step` (micro-batches,
optimizer step, EMA) -> `train` (the loop: log, checkpoint, validate, save).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from .checkpointing import Checkpointer
from .config import Config, load_config
from .examples import ConditionEncoder, choose_batch, collate, pair_example, single_example
from .initialization import init_from_wan, is_audio_face_parameter
from .loss import flow_matching_loss, noise_generator
from .metrics_log import MetricsLogger
from .shards import ShardIndex


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
        # Data
        # Stage 1 pairs its own single-person clips; stage 2 pairs those of `pair_shards`, if given
        # (its single batches stay its own clips).
        shards = ShardIndex.shard_files(cfg.data.shards)
        own_shards = len(shards)
        if cfg.data.pair_shards:
            shards += ShardIndex.shard_files(cfg.data.pair_shards)
        self.index = ShardIndex(shards)
        self.singles = [i for i, entry in enumerate(self.index.entries) if entry[0] < own_shards]
        self.pairable = [i for i, entry in enumerate(self.index.entries) if "half_frames.npy" in entry[2]
                         and (cfg.data.stage == 1 or entry[0] >= own_shards)]
        # Model and frozen encoders
        components = load_components(cfg)
        self.components = components
        self.transformer = components["transformer"].train()
        self.encoder = ConditionEncoder(components["vae"], components["text_encoder"], components["tokenizer"],
                                        components["image_encoder"], components["audio_encoder"],
                                        text_len=self.transformer.config.text_len, fps=cfg.data.fps)
        if cfg.train.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        # Optimizer, LR schedule, EMA
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
        self.checkpointer = Checkpointer(self.accelerator, self.output, cfg.output.keep_checkpoints)
        self.step = 0

    # --- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Model, optimizer, LR scheduler, EMA, RNG states and the step (see `checkpointing`)."""
        return self.checkpointer.save(self.step)

    def resume(self) -> int:
        """Loads the newest complete checkpoint of the output folder; returns its step (0 if none)."""
        self.step = self.checkpointer.resume()
        return self.step

    # --- stages -----------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[str, dict, int]:
        """(kind, collated model inputs, position of the first in the global batch): this process's
        share of step `step`'s examples, encoded (`examples.ConditionEncoder`)."""
        cfg = self.config
        kind, chosen = choose_batch(self.singles, self.pairable, step, cfg.train.batch_size,
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

    def forward_backward(self, micro_batch: dict, first: int) -> torch.Tensor:
        """The loss of a micro-batch whose first example is at `first` of the global batch, and its
        backward pass; returns the loss."""
        cfg = self.config
        size = micro_batch["latents"].shape[0]
        generators = [noise_generator(cfg.train.seed, self.step, first + j) for j in range(size)]
        loss = flow_matching_loss(self.transformer, micro_batch, generators, cfg.train.flow_shift,
                                  cfg.train.timestep_weighting, cfg.train.temporal_loss_weight)
        self.accelerator.backward(loss)
        return loss

    def train_step(self) -> tuple[float, str]:
        """One optimizer step over the step's global batch; (mean loss over processes, batch kind)."""
        cfg, acc = self.config, self.accelerator
        kind, batch, first = self.batch(self.step)
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        accumulation = cfg.train.gradient_accumulation_steps
        micro = batch["latents"].shape[0] // accumulation
        total = 0.0
        for m in range(accumulation):
            part = {k: v[m * micro:(m + 1) * micro] for k, v in batch.items()}
            with acc.accumulate(self.transformer):
                loss = self.forward_backward(part, first + m * micro)
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

    def train(self, resume: bool = False, stop_after: int | None = None) -> Path:
        """Steps until `max_steps` (or `stop_after`), logging, checkpointing and validating on the
        way; then the trained transformer (`save_model`). Returns its folder (the output folder
        when stopped early)."""
        cfg, acc = self.config, self.accelerator
        self.output.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            (self.output / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        if resume:
            self.resume()
        last = cfg.train.max_steps if stop_after is None else min(cfg.train.max_steps, stop_after)
        log = MetricsLogger(self.output, cfg.output.log_with, acc.is_main_process, resume)
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

    # --- results ----------------------------------------------------------------------------
    def unwrapped_transformer(self):
        return self.accelerator.unwrap_model(self.transformer)

    def sharded(self) -> bool:
        """The weights are split over the processes (FSDP, DeepSpeed ZeRO-3): every process must
        take part in each forward pass and in gathering the state dict."""
        from accelerate.utils import DistributedType

        acc = self.accelerator
        if acc.distributed_type == DistributedType.FSDP:
            return True
        if acc.distributed_type == DistributedType.DEEPSPEED:
            return acc.deepspeed_config.get("zero_optimization", {}).get("stage") == 3
        return False

    def save_model(self) -> Path:
        """The trained transformer in diffusers format (`output/transformer`, and EMA weights in
        `output/transformer_ema`), loadable as a pipeline component or a later stage's start.

        The full state dict is gathered on every process (`accelerator.get_state_dict`: FSDP and
        ZeRO-3 gather collectively) and written by rank 0; the model itself is never changed (LoRA
        adapters are merged into the written weights, EMA weights replace the trained ones in theirs)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        target = self.output / "transformer"
        state = acc.get_state_dict(self.transformer)
        if acc.is_main_process:
            model = self.unwrapped_transformer()
            lora = self.config.train.trainable == "lora"  # ship plain weights: the adapters merged in
            save_pretrained_state(model, target, merged_lora_state_dict(model, state) if lora else state)
            if self.ema is not None:
                ema_state = dict(state)
                trained = [_state_name(name) for name, p in model.named_parameters() if p.requires_grad]
                for name, shadow in zip(trained, self.ema.shadow_params, strict=True):
                    ema_state[name] = shadow.detach().to(device=state[name].device, dtype=state[name].dtype)
                save_pretrained_state(model, self.output / "transformer_ema",
                                      merged_lora_state_dict(model, ema_state) if lora else ema_state)
        acc.wait_for_everyone()
        return target

    @torch.no_grad()
    def validate(self) -> Path | None:
        """A short clip of a fixed validation sample (the dataset's first), generated through the
        generation API (`pipeline.runner.generate`) with the model as trained so far, and saved
        as OUTPUT/validation/step-NNNNNN.mp4 with the sample's mixed tracks.

        On rank 0 only; with sharded weights (FSDP, ZeRO-3) every process runs the same generation
        (each forward needs all of them) and rank 0 alone writes the clip."""
        sharded = self.sharded()
        if not (sharded or self.accelerator.is_main_process):
            return None
        from ..audio.alignment import mix_tracks
        from ..audio.io import SAMPLE_RATE
        from ..faces.detection import FaceBox
        from ..pipeline import AnyTalkerPipeline
        from ..pipeline.runner import GenerationInputs, SamplingSettings, generate, wrap_pipeline
        from ..video.io import write_video

        cfg = self.config
        sample = self.index.read(0)
        # Sharded: the prepared model (FSDP1's wrapper gathers its flat parameters; FSDP2 and ZeRO-3
        # are the module itself, with their gathering hooks).
        model = self.transformer if sharded else self.unwrapped_transformer()
        model.eval()
        pipe = AnyTalkerPipeline(**{**self.components, "transformer": model})
        pipe.set_progress_bar_config(disable=True)
        inputs = GenerationInputs(sample.frames[0], sample.audio, [FaceBox(*p["box"]) for p in sample.meta["persons"]],
                                  sample.meta.get("caption", ""))
        sampling = SamplingSettings(size=(sample.meta["height"], sample.meta["width"]), fps=cfg.data.fps,
                                    steps=cfg.output.validation_steps, seed=cfg.train.seed)
        try:
            result = generate(wrap_pipeline(pipe, device=str(self.accelerator.device)), inputs, sampling)
        finally:
            model.train()
        if not self.accelerator.is_main_process:
            return None
        path = self.output / "validation" / f"step-{self.step:06d}.mp4"
        write_video(path, result.frames, cfg.data.fps, audio=mix_tracks(sample.audio, sample_rate=SAMPLE_RATE),
                    sample_rate=SAMPLE_RATE)
        return path


def _state_name(name: str) -> str:
    """A parameter's or module's name as full state dicts write it (wrapper segments removed)."""
    for wrapper in ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module."):
        name = name.replace(wrapper, "")
    return name


def merged_lora_state_dict(model, state_dict: dict) -> dict:
    """`state_dict` (of `model`, which carries PEFT LoRA adapters) with every active adapter merged
    into its base weight and the adapters removed: the state dict `fuse_lora(); unload_lora()` would
    leave, computed as PEFT's merge does (same operations, same bits), without changing `model`."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import transpose

    merged = dict(state_dict)
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        prefix = f"{_state_name(name)}." if name else ""
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            if adapter in getattr(module, "lora_variant", {}) or getattr(module, "lora_bias", {}).get(adapter, False):
                raise NotImplementedError(f"{name}: merging LoRA variants (DoRA ...) or LoRA biases is not supported")
            weight_a = merged[f"{prefix}lora_A.{adapter}.weight"]
            weight_b = merged[f"{prefix}lora_B.{adapter}.weight"]
            dtype = weight_b.dtype
            cast = weight_b.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)
            if cast:
                weight_a, weight_b = weight_a.float(), weight_b.float()
            delta = transpose(weight_b @ weight_a, module.fan_in_fan_out) * module.scaling[adapter]
            if cast:
                delta = delta.to(dtype=dtype)
            key = f"{prefix}base_layer.weight"
            merged[key] = (merged[key] + delta).to(merged[key].dtype)
    plain = {}
    for key, value in merged.items():
        if ".lora_" in f".{key}":
            continue
        plain[f".{key}".replace(".base_layer.", ".")[1:]] = value
    return plain


def save_pretrained_state(model, folder: str | os.PathLike, state_dict: dict, max_shard_size: str = "10GB") -> Path:
    """`model.save_pretrained(folder)` with `state_dict` as the weights (diffusers' layout: config.json,
    diffusion_pytorch_model.safetensors, sharded with an index past `max_shard_size`). The config
    names the model's own class, not a wrapper's (FSDP2 renames the class to FSDP<name>)."""
    import safetensors.torch
    from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME
    from huggingface_hub import split_torch_state_dict_into_shards

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.to_json_string()
    plain = next(c for c in type(model).__mro__ if not c.__name__.startswith("FSDP"))
    if plain is not type(model):
        config = json.dumps({**json.loads(config), "_class_name": plain.__name__}, indent=2, sort_keys=True) + "\n"
    (folder / model.config_name).write_text(config, encoding="utf-8")
    pattern = SAFETENSORS_WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors")
    split = split_torch_state_dict_into_shards(state_dict, max_shard_size=max_shard_size, filename_pattern=pattern)
    for filename, names in split.filename_to_tensors.items():
        shard = {name: state_dict[name].contiguous() for name in names}
        safetensors.torch.save_file(shard, folder / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n",
                                                      encoding="utf-8")
    return folder
