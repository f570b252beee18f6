"""Weight memory: fp8 storage, torchao weight-only int8 / fp8, group offload and model CPU offload.

What each keeps in full precision (the compute dtype, or float32 where the model keeps it):
- `fp8-storage` (diffusers' `enable_layerwise_casting`): weights of linear / conv layers stored as
  float8_e4m3fn and upcast layer by layer; kept: patch embedding, condition embedders (time, text,
  image), face embedder, audio projector, proj_out, every norm and the `scale_shift_table`s.
- `int8` / `fp8` (torchao `quantize_` after loading, weight-only): only the linear layers inside the
  transformer blocks (self-, cross-, audio-face attention, feed-forward), int8 or float8 weights
  with a per-row scale; kept: everything outside the blocks (embedders, audio projector, proj_out),
  the blocks' norms and `scale_shift_table`s.
- `block` / `leaf` group offload (diffusers' `enable_group_offload`, CUDA streams on a GPU): the
  transformer's blocks (one group of `offload_blocks`, or each leaf layer) and the text encoder
  wait in CPU memory and are copied in just before they run; nothing is quantized.
- `model` offload: each component moves to the GPU only while it runs.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn as nn

FP8_STORAGE_KEPT = ("patch_embedding", "condition_embedder", "face_embedder", "audio_projector", "proj_out",
                    "norm", "scale_shift_table")
TORCHAO_KEPT = ("patch_embedding", "condition_embedder", "face_embedder", "audio_projector", "proj_out",
                "norm", "scale_shift_table")
KEPT = {"fp8-storage": FP8_STORAGE_KEPT, "int8": TORCHAO_KEPT, "fp8": TORCHAO_KEPT}


def torchao_problem() -> str | None:
    """Why torchao's weight-only quantization cannot run here (None when it can)."""
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install torchao, or pip install -e '.[speed]')"
    return None


def in_blocks(module: nn.Module, fqn: str) -> bool:
    """torchao's filter: linear layers inside the transformer blocks."""
    return isinstance(module, nn.Linear) and fqn.startswith("blocks.")


def _quiet_torchao():
    import logging

    logging.getLogger("torchao").setLevel(logging.ERROR)


def quantize_weights(transformer, mode: str | None, compute_dtype: torch.dtype) -> dict:
    """Applies `mode` (fp8-storage, int8, fp8) to the transformer's weights in place; returns
    {"quantize", "kept_full_precision", "layers"} for the sidecar."""
    if not mode:
        return {}
    if mode == "fp8-storage":
        from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

        patterns = tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(transformer._skip_layerwise_casting_patterns) \
            + tuple(transformer._keep_in_fp32_modules) + ("audio_projector",)
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype,
                                             skip_modules_pattern=tuple(dict.fromkeys(patterns)))
        layers = sum(1 for m in transformer.modules() if isinstance(m, (nn.Linear, nn.Conv3d))
                     and any(p.dtype == torch.float8_e4m3fn for p in m.parameters(recurse=False)))
    elif mode in ("int8", "fp8"):
        problem = torchao_problem()
        if problem:
            raise RuntimeError(problem)
        _quiet_torchao()
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        layers = sum(1 for name, m in transformer.named_modules() if in_blocks(m, name))
        config = Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig()
        quantize_(transformer, config, filter_fn=in_blocks)
    else:
        raise ValueError(f"unknown quantization {mode!r}")
    return {"quantize": mode, "kept_full_precision": list(KEPT[mode]), "layers": layers}


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Storage bytes of a tensor, looking inside tensor subclasses (torchao's quantized weights hold
    int8 / float8 data plus scales)."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def weight_bytes(module: nn.Module, buffers: bool = False) -> int:
    """Bytes of every parameter (and with `buffers`, buffer such as rope tables) of `module` as stored."""
    total = sum(tensor_bytes(t) for t in module.parameters())
    return total + (sum(tensor_bytes(b) for b in module.buffers()) if buffers else 0)


def apply_offload(pipe, mode: str | None, device: str, blocks: int = 1) -> None:
    """Places the pipeline's components: on `device`, or offloaded (`model`, `block`, `leaf`)."""
    if mode == "model":
        pipe.enable_model_cpu_offload()
        return
    if mode not in ("block", "leaf"):
        pipe.to(device)
        return
    from diffusers.hooks import apply_group_offloading

    onload = torch.device(device)
    stream = onload.type == "cuda"
    kwargs = {"onload_device": onload, "offload_device": torch.device("cpu"), "use_stream": stream,
              "offload_type": "block_level" if mode == "block" else "leaf_level"}
    if mode == "block":
        kwargs["num_blocks_per_group"] = blocks
    for name, component in pipe.components.items():
        if not isinstance(component, nn.Module):
            continue
        if name == "transformer":
            component.enable_group_offload(**kwargs)
        elif name == "text_encoder":
            apply_group_offloading(component, **kwargs)
        else:
            component.to(device)


def weight_memory(config: dict, mode: str | None, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Bytes of an AnyTalkerTransformer's weights with `config` (e.g. the 1.3B release's) loaded in
    `dtype` (the `_keep_in_fp32_modules` in float32, as loading does) and then `mode`, without
    allocating the model: it is built on the meta device; fp8-storage casts the meta tensors; for
    int8 / fp8 one real layer of each distinct quantized shape is materialised, quantized with
    torchao and measured, and that size counted for every layer of the shape.
    Returns {"bytes", "parameters", "quantized_layers"}."""
    from accelerate import init_empty_weights

    from ..models import AnyTalkerTransformer

    with init_empty_weights():
        model = AnyTalkerTransformer.from_config(config)
    keep = tuple(model._keep_in_fp32_modules)
    for name, module in model.named_modules():
        for pname, param in list(module.named_parameters(recurse=False)):
            fp32 = any(part in f"{name}.{pname}".split(".") for part in keep)
            param.data = param.data.to(torch.float32 if fp32 else dtype)
    if mode == "fp8-storage":
        quantize_weights(model, mode, dtype)
    measured: dict[tuple, int] = {}
    total, quantized = 0, 0
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if mode in ("int8", "fp8") and in_blocks(module, name):
            shape = (module.out_features, module.in_features)
            if shape not in measured:
                real = nn.Linear(module.in_features, module.out_features, bias=False, dtype=dtype)
                quantize_weights(_Holder(real), mode, dtype)
                measured[shape] = tensor_bytes(real.weight)
            total += measured[shape] + (tensor_bytes(module.bias) if module.bias is not None else 0)
            quantized += 1
        else:
            total += sum(tensor_bytes(p) for p in own)
    return {"bytes": total, "parameters": sum(p.numel() for p in model.parameters()), "quantized_layers": quantized}


class _Holder(nn.Module):
    """One linear layer under the name `blocks.0`, so `in_blocks` selects it."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.blocks = nn.ModuleList([linear])
