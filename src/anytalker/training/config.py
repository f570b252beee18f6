"""Training configuration: a YAML file mapped onto dataclasses (unknown keys are errors)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class ModelConfig:
    source: str = "random-tiny"  # random-tiny | diffusers folder | release folder
    variant: str = "1.3B"  # release folder's DiT
    transformer: str | None = None  # start from this transformer folder (e.g. stage 1's output)
    init_from_wan: str | None = None  # build the audio/face modules on top of a plain Wan2.1 I2V DiT file
    seed: int = 0  # random-tiny's initialisation


@dataclass
class DataConfig:
    shards: str = ""  # folder made by `anytalker prepare`
    stage: int = 1  # 1: single clips + side-by-side pairs; 2: real multi-person clips
    concat_probability: float = 0.5  # share of batches made of side-by-side pairs
    pair_shards: str = ""  # stage 2: also draw pair batches from this stage-1 folder (concat_probability of them)
    pair_prompt: str = "Two people are talking to each other."
    mask_enlarge: tuple[float, float] = (1.0, 1.3)  # random scale of face boxes for the token masks
    single_view: str = "full"  # single-person examples: "full" frame or the face-centred "half" view
    fps: int = 24


@dataclass
class TrainConfig:
    batch_size: int = 2  # global, across processes and accumulation steps
    gradient_accumulation_steps: int = 1
    max_steps: int = 100
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    lr_scheduler: str = "constant_with_warmup"  # any diffusers.optimization scheduler name
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    trainable: str = "all"  # all | audio (audio/face modules only) | lora
    lora_rank: int = 16
    mixed_precision: str = "no"  # no | bf16 | fp16
    gradient_checkpointing: bool = False
    ema_decay: float | None = None
    flow_shift: float = 3.0
    timestep_weighting: str = "none"  # none | bell (the release scheduler's training weights)
    temporal_loss_weight: float = 0.0  # + this x MSE of the error's frame-to-frame change outside the faces
    seed: int = 0


@dataclass
class OutputConfig:
    dir: str = "runs/anytalker"
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    validate_every: int = 0  # 0: never
    validation_steps: int = 4  # denoising steps of the validation clip
    log_with: str = "csv"  # csv | tensorboard


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown keys in {where}: {unknown}; expected some of {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        default = names[name].default_factory() if names[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def load_config(source: str | os.PathLike | dict) -> Config:
    """A Config from a YAML path or a dict; relative data/output paths are kept as given."""
    if isinstance(source, dict):
        values = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"training config not found: {path}")
        values = yaml.safe_load(path.read_text()) or {}
    config = _build(Config, values, "config")
    if config.data.stage not in (1, 2):
        raise ValueError(f"data.stage must be 1 or 2, got {config.data.stage}")
    if config.data.pair_shards and config.data.stage != 2:
        raise ValueError("data.pair_shards is for stage 2 (stage 1 pairs the clips of data.shards)")
    if not 0.0 <= config.data.concat_probability <= 1.0:
        raise ValueError(f"data.concat_probability must be in [0, 1], got {config.data.concat_probability}")
    if config.train.trainable not in ("all", "audio", "lora"):
        raise ValueError(f"train.trainable must be all, audio or lora, got {config.train.trainable!r}")
    if config.data.single_view not in ("full", "half"):
        raise ValueError("data.single_view must be full or half")
    if config.train.timestep_weighting not in ("none", "bell"):
        raise ValueError("train.timestep_weighting must be none or bell")
    if not config.train.temporal_loss_weight >= 0:
        raise ValueError(f"train.temporal_loss_weight must be >= 0, got {config.train.temporal_loss_weight}")
    return config
