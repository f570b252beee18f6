"""Attention backends through diffusers' dispatch: every attention in AnyTalkerTransformer (self, text,
image and the grouped audio-face attention) calls `dispatch_attention_fn` without a mask, so the
backend that `set_attention_backend` chooses serves all of them."""

from __future__ import annotations

import importlib.util

# Backends whose kernels only run on a CUDA device (the native math / efficient / flex paths also run
# on the CPU).
_CUDA_ONLY = ("flash", "flash_varlen", "_flash_3", "_flash_varlen_3", "_native_cudnn", "_native_flash", "sage",
              "sage_varlen", "_sage_qk_int8_pv_fp8_cuda", "_sage_qk_int8_pv_fp8_cuda_sm90",
              "_sage_qk_int8_pv_fp16_cuda", "_sage_qk_int8_pv_fp16_triton", "xformers")
# backend -> (module that must import, how to get it)
_KERNELS = {"flash": ("flash_attn", "pip install flash-attn"),
            "flash_varlen": ("flash_attn", "pip install flash-attn"),
            "_flash_3": ("flash_attn_interface", "build FlashAttention 3 from its hopper/ folder"),
            "_flash_varlen_3": ("flash_attn_interface", "build FlashAttention 3 from its hopper/ folder"),
            "xformers": ("xformers", "pip install xformers")}


def backend_choices() -> tuple[str, ...]:
    """diffusers' AttentionBackendName values, minus the `*_hub` ones (they download kernels at run time)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return tuple(sorted(b.value for b in AttentionBackendName if not b.value.endswith("_hub")))


def _kernel(name: str) -> tuple[str, str] | None:
    if "sage" in name:
        return "sageattention", "pip install sageattention"
    return _KERNELS.get(name)


def backend_problem(name: str) -> str | None:
    """Why the backend `name` cannot run here (None when it can): an unknown name, a kernel package
    that is not installed, or a CUDA-only kernel without a GPU. Cheap: runs before any weights load."""
    import torch

    choices = backend_choices()
    if name not in choices:
        return f"choose from {', '.join(choices)} (hub backends download kernels at run time and are not offered)"
    kernel = _kernel(name)
    if kernel and importlib.util.find_spec(kernel[0]) is None:
        return f"its kernel ({kernel[0]}) is not installed: {kernel[1]}"
    try:  # diffusers' own check (versions, optional packages); private upstream, so guarded
        from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

        _check_attention_backend_requirements(AttentionBackendName(name))
    except ImportError:
        pass
    except (RuntimeError, ValueError) as problem:
        return str(problem)
    if name in _CUDA_ONLY and not torch.cuda.is_available():
        return "this kernel needs a CUDA GPU"
    return None


def apply_attention_backend(transformer, name: str | None) -> None:
    """Sets the backend on every attention processor of `transformer` (None keeps diffusers' default)."""
    if not name:
        return
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()  # "Attention backends are an experimental feature" on every call
    try:
        transformer.set_attention_backend(name)
    finally:
        logging.set_verbosity(level)


def processor_backends(transformer) -> dict[str, str | None]:
    """{module name: backend} of every attention module: what a call will dispatch to."""
    from diffusers.models.attention import AttentionModuleMixin

    return {name: getattr(getattr(module.processor, "_attention_backend", None), "value",
                          getattr(module.processor, "_attention_backend", None))
            for name, module in transformer.named_modules() if isinstance(module, AttentionModuleMixin)}
