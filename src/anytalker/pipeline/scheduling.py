"""Schedulers as the release samples: flow matching with shifted sigmas (diffusers' own classes)."""

from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

RELEASE_FLOW_SHIFT = 3.0  # the release's shift at 480p


def default_scheduler(flow_shift: float = RELEASE_FLOW_SHIFT) -> UniPCMultistepScheduler:
    """UniPC with flow sigmas, the release's sampler."""
    return UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
    )


def make_scheduler(name: str, flow_shift: float = RELEASE_FLOW_SHIFT):
    """`unipc` (the release's sampler) or `euler` (flow-match Euler), both with shifted flow sigmas."""
    if name == "unipc":
        return default_scheduler(flow_shift)
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=flow_shift)
    raise ValueError(f"unknown scheduler {name!r}: choose unipc or euler")


def repeated_timesteps(name: str, flow_shift: float, steps: int) -> bool:
    """Whether `steps` steps of this scheduler would visit an integer timestep twice. UniPC's
    multistep update then divides by a zero step and fails deep in the loop (measured at shift 3:
    300 steps run, 350 do not); the flow-match Euler sampler has no such limit."""
    if name != "unipc":
        return False
    scheduler = make_scheduler(name, flow_shift)
    scheduler.set_timesteps(steps)
    return len(set(scheduler.timesteps.tolist())) < len(scheduler.timesteps)
