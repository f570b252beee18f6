"""Several processes: one video on K of them (context parallelism), many videos over all of them.

A launch (`torchrun --nproc_per_node P`, `accelerate launch`, several nodes) has `world_size`
processes. They form `world_size / K` groups of K consecutive ranks; each group makes one video
at a time with K-way context parallelism, and the groups share a batch's videos
(`anytalker.pipeline.batch`). K = 1 is plain data parallelism, with no communication at all.

Inside a group (K > 1):
- the transformer is split on the sequence axis by its `_cp_plan`; only self-attention
  communicates, and every rank ends each step with the full prediction, so every rank runs the
  same scheduler step on the same latents. The group's K = R x U ranks pass keys / values around
  rings of R (ring attention: needs a backend that returns the log-sum-exp, `RING_BACKENDS`) and
  exchange heads among U (Ulysses all-to-all, on any context-parallel backend); R = 1 by default;
- the encoders (umT5, CLIP, wav2vec2) and the VAE run once, on the group's first rank (the
  writer), and their outputs are broadcast to the group (`share_pipeline_work`);
- only the writer writes files.

On CUDA the transformer is set up with diffusers' `enable_parallelism`; on a CPU-only host that
call fails (it divides by the accelerator count), so the same hooks are installed by hand on
gloo processes (`enable_context_parallel`): that is how the tests run.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..pipeline.settings import SettingsError, plain_label

# Pipeline steps that run on the writer only (their outputs are broadcast to the group).
SHARED_PIPELINE_STEPS = ("encode_prompt", "encode_image", "encode_audio", "prepare_latents", "decode")
# Attention backends whose kernels return the log-sum-exp that ring attention merges partial
# results with (diffusers' `native` SDPA does not; the *_hub ones download kernels at run time).
RING_BACKENDS = ("_native_cudnn", "_native_flash", "flash", "sage")


def launch_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) of this process: torch.distributed's once initialised, else
    the launcher's environment (RANK / WORLD_SIZE / LOCAL_RANK, as torchrun and accelerate set
    them, across nodes), else (0, 1, 0)."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size(), local
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local


@dataclass(frozen=True)
class ParallelSettings:
    """How the processes of a launch share the work.

    context_parallel: K processes make each video together; the launch's process count must be a
    multiple of K. ring_degree: R of them (R divides K) form a ring that passes keys / values
    around, the other factor K / R splits heads (Ulysses); R = 1 is pure Ulysses. Ring needs an
    attention backend of `RING_BACKENDS` (checked against the ModelSettings' backend); it
    suits head counts K does not divide. ulysses_anything: diffusers' Ulysses for head counts
    and token counts K / R does not divide (uneven all-to-all, slower); switched on by itself
    when the heads do not divide.
    """

    context_parallel: int = 1
    ulysses_anything: bool = False
    ring_degree: int = 1

    @property
    def ulysses_degree(self) -> int:
        return self.context_parallel // self.ring_degree

    def validate(self, label: Callable[[str], str] = plain_label, world_size: int | None = None,
                 model=None) -> "ParallelSettings":
        """Checks against the launch (`world_size`: the launcher's unless given) and, when given,
        the ModelSettings: offloading and step caches do not combine with context parallelism."""
        degree = self.context_parallel
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise SettingsError("context_parallel", f"{label('context_parallel')} must be a positive integer, "
                                                    f"got {degree!r}")
        ring = self.ring_degree
        if isinstance(ring, bool) or not isinstance(ring, int) or ring < 1 or degree % ring:
            raise SettingsError("ring_degree", f"{label('ring_degree')} must be a positive integer that divides "
                                               f"{label('context_parallel')} {degree}, got {ring!r}")
        world = launch_env()[1] if world_size is None else world_size
        if world % degree:
            raise SettingsError("context_parallel", f"{label('context_parallel')} {degree} does not divide the "
                                                    f"{world} launched processes: each group of {degree} makes "
                                                    f"one video (launch a multiple of {degree} processes, e.g. "
                                                    f"torchrun --nproc_per_node {degree})")
        speed = getattr(model, "speed", None)
        backend = getattr(speed, "attention_backend", None)
        if model is not None and ring > 1 and backend not in RING_BACKENDS:
            raise SettingsError("ring_degree", f"{label('ring_degree')} {ring} needs an attention backend that "
                                               f"returns the log-sum-exp: set {label('attention_backend')} to one of "
                                               f"{', '.join(RING_BACKENDS)} (got {backend or 'the default, native'})")
        clashes = [name for name, used in (("cpu_offload", getattr(model, "cpu_offload", False)),
                                           ("offload", getattr(speed, "offload", None)),
                                           ("cache", getattr(speed, "cache", None))) if used]
        if degree > 1 and clashes:
            # Offload hooks move weights under the split; a step cache decides on each rank's shard,
            # so ranks could disagree about skipping a step and stall in the next all-to-all.
            raise SettingsError(clashes[0], f"{label(clashes[0])} does not combine with "
                                            f"{label('context_parallel')} {degree}")
        return self


@dataclass
class ParallelContext:
    """This process's place in the launch. Ranks g*K .. g*K+K-1 form group g; its first rank writes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    context_parallel: int = 1
    ulysses_anything: bool = False
    mesh: object = None  # DeviceMesh ("batch", "ring", "ulysses") when context_parallel > 1
    device: str = "cpu"  # "cuda": this process's GPU (torch.cuda.current_device())
    ring_degree: int = 1
    group_handle: object = None  # the group's K ranks as one torch.distributed group (K > 1)

    @property
    def num_groups(self) -> int:
        return self.world_size // self.context_parallel

    @property
    def group(self) -> int:
        return self.rank // self.context_parallel

    @property
    def group_rank(self) -> int:
        return self.rank % self.context_parallel

    @property
    def leader(self) -> int:
        """Global rank of the group's writer."""
        return self.group * self.context_parallel

    @property
    def is_writer(self) -> bool:
        return self.group_rank == 0

    @property
    def process_group(self):
        """The group's torch.distributed process group (None without context parallelism)."""
        return self.group_handle


def start_parallel(settings: ParallelSettings, device: str | None = None) -> ParallelContext:
    """Joins the launch: pins this process's GPU and, with context parallelism, initialises
    torch.distributed ("cpu:gloo,cuda:nccl" on GPUs, gloo on the CPU) and the device mesh.
    Plain data parallelism (K = 1) needs no process group: a failed rank cannot stall the others."""
    rank, world, local = launch_env()
    settings.validate(world_size=world)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        torch.cuda.set_device(local % torch.cuda.device_count())
    degree, ring, mesh, handle = settings.context_parallel, settings.ring_degree, None, None
    if degree > 1:
        dist = torch.distributed
        if not dist.is_initialized():
            dist.init_process_group("cpu:gloo,cuda:nccl" if device == "cuda" else "gloo", rank=rank, world_size=world)
        # Rank b*K + r*U + u: batch group b, ring position r, Ulysses position u (consecutive ranks
        # share a node, so the all-to-all, the chattiest exchange, stays inside it).
        mesh = dist.device_mesh.init_device_mesh(device, (world // degree, ring, degree // ring),
                                                 mesh_dim_names=("batch", "ring", "ulysses"))
        for first in range(0, world, degree):  # every rank creates every group, in the same order
            created = dist.new_group(list(range(first, first + degree)))
            handle = created if first <= rank < first + degree else handle
    return ParallelContext(rank, world, local, degree, settings.ulysses_anything, mesh, device, ring, handle)


def enable_context_parallel(transformer, context: ParallelContext, plan: dict | None = None) -> None:
    """K-way context parallelism on `transformer` over `context`'s group: Ulysses on any
    context-parallel-capable attention backend, ring (R > 1) on the `RING_BACKENDS`.
    `plan`: the model's `_cp_plan` unless given (tests pass a broken one)."""
    from diffusers import ContextParallelConfig, ParallelConfig
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    degree = context.context_parallel
    if degree < 2:
        return
    heads, ring = transformer.config.num_attention_heads, context.ring_degree
    ulysses = degree // ring
    config = ContextParallelConfig(ring_degree=ring, ulysses_degree=ulysses, mesh=context.mesh,
                                   ulysses_anything=ulysses > 1 and (context.ulysses_anything or heads % ulysses != 0))
    plan = transformer._cp_plan if plan is None else plan
    device = next(transformer.parameters()).device
    processors = [module.processor for module in transformer.modules() if hasattr(module, "processor")]
    for processor in processors:
        backend = getattr(processor, "_attention_backend", None)
        backend = AttentionBackendName(backend) if backend else _AttentionBackendRegistry.get_active_backend()[0]
        if hasattr(processor, "_parallel_config") and not _AttentionBackendRegistry._is_context_parallel_available(
                backend):
            raise ValueError(f"attention backend {backend.value!r} does not support context parallelism; choose "
                             f"one of {sorted(_AttentionBackendRegistry._supports_context_parallel)}")
        if hasattr(processor, "_parallel_config") and ring > 1 and backend.value not in RING_BACKENDS:
            raise ValueError(f"ring attention needs a backend that returns the log-sum-exp ({', '.join(RING_BACKENDS)}), "
                             f"not {backend.value!r}")
    if device.type == "cuda":
        transformer.enable_parallelism(config=config, cp_plan=plan)
        return
    # CPU: enable_parallelism's steps without its accelerator lookup.
    parallel = ParallelConfig(context_parallel_config=config)
    parallel.setup(context.rank, context.world_size, device, mesh=context.mesh)
    transformer._parallel_config = parallel
    for processor in processors:
        if hasattr(processor, "_parallel_config"):  # self-attention only (see models.attention)
            processor._parallel_config = parallel
    apply_context_parallel(transformer, config, plan)


def broadcast(value, context: ParallelContext):
    """`value` (a tensor or a tuple of tensors; anything on the other ranks) from the group's
    writer to every rank of the group. Tensors arrive contiguous on the writer's device type
    (this rank's device); the writer returns contiguous copies too, so every rank holds the same
    bits. On GPUs every tensor travels through the GPU (NCCL), CPU ones included."""
    dist = torch.distributed
    group = context.process_group
    single = torch.is_tensor(value)
    transport = torch.device("cuda", torch.cuda.current_device()) if context.device == "cuda" else None
    if context.is_writer:
        tensors = [t.contiguous() for t in ((value,) if single else value)]
        header = [(single, [(t.shape, t.dtype, t.device.type) for t in tensors])]
    else:
        header = [None]
    dist.broadcast_object_list(header, src=context.leader, group=group)
    single, specs = header[0]
    if context.is_writer:
        sent = [t.to(transport or t.device) for t in tensors]
    else:
        sent = [torch.empty(shape, dtype=dtype, device=transport or kind) for shape, dtype, kind in specs]
    for tensor in sent:
        dist.broadcast(tensor, src=context.leader, group=group)
    if not context.is_writer:
        tensors = [t.to(kind) for t, (_, _, kind) in zip(sent, specs)]
    return tensors[0] if single else tuple(tensors)


def broadcast_object(value, context: ParallelContext):
    """A picklable `value` from the group's writer to the group (itself without context parallelism)."""
    if context.process_group is None:
        return value
    holder = [value if context.is_writer else None]
    torch.distributed.broadcast_object_list(holder, src=context.leader, group=context.process_group)
    return holder[0]


def share_pipeline_work(pipe, context: ParallelContext) -> None:
    """The pipeline's encoders and VAE steps (`SHARED_PIPELINE_STEPS`) run on the group's writer
    only; the other ranks receive their outputs. (The denoising steps need every rank.)"""
    if context.context_parallel < 2:
        return
    for name in SHARED_PIPELINE_STEPS:
        step = getattr(pipe, name)

        @functools.wraps(step)
        def shared(*args, _step=step, **kwargs):
            return broadcast(_step(*args, **kwargs) if context.is_writer else None, context)

        setattr(pipe, name, shared)


def parallelize(loaded, context: ParallelContext):
    """A `LoadedPipeline` set up for its group: context-parallel transformer, shared encoders."""
    if context.context_parallel > 1:
        enable_context_parallel(loaded.pipe.transformer, context)
        share_pipeline_work(loaded.pipe, context)
    return loaded


# Collecting over the whole launch waits for the slowest process's share of a long job (a bench's
# generations): far past torch.distributed's default 30-minute timeout.
COLLECT_TIMEOUT_S = 7 * 24 * 3600


def collect(value, context: ParallelContext, timeout_s: float = COLLECT_TIMEOUT_S) -> list | None:
    """Every process's picklable `value`, in rank order, on rank 0 (None on the others); also a
    barrier of the whole launch. One process: [value]. Travels over a gloo group (the default group
    when this call creates it; a new gloo group over an existing one), so it needs no GPU backend."""
    if context.world_size < 2:
        return [value]
    import datetime

    dist = torch.distributed
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=context.rank, world_size=context.world_size, timeout=timeout)
        group = None
    else:
        group = dist.new_group(backend="gloo", timeout=timeout)
    gathered = [None] * context.world_size if context.rank == 0 else None
    dist.gather_object(value, gathered, dst=0, group=group)
    return gathered
