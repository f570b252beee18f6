"""Schedulers as the release samples: flow matching with shifted sigmas (diffusers' own classes)."""

from diffusers import UniPCMultistepScheduler

RELEASE_FLOW_SHIFT = 3.0  # the release's shift at 480p


def default_scheduler(flow_shift: float = RELEASE_FLOW_SHIFT) -> UniPCMultistepScheduler:
    """UniPC with flow sigmas, the release's sampler."""
    return UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
    )

