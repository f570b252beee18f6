"""The training objective: flow matching with Wan's shifted sigmas and optional timestep weights.

Every random draw of a step (noise, timestep) comes from `noise_generator(seed, step, position)`,
a pure function of the example's place in the global batch, so a resumed run and a run on another
number of processes draw the same.
"""

from __future__ import annotations

import torch

__all__ = ["background_weights", "flow_matching_loss", "noise_generator", "sigma_schedule", "timestep_weights"]


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


def noise_generator(seed: int, step: int, position: int) -> torch.Generator:
    """The generator of the example at `position` of the global batch of step `step`."""
    return torch.Generator().manual_seed(hash((seed, step, position)) & 0x7FFF_FFFF_FFFF)


def background_weights(token_masks: torch.Tensor, latent_shape: torch.Size) -> torch.Tensor:
    """[B, 1, 1, h, w]: 1 on the latent pixels outside every identity's face region, 0 inside.
    The token masks [B, N, h/ph, w/pw] are repeated over each token's patch to the latent grid."""
    union = token_masks.amax(dim=1).float()
    ph, pw = latent_shape[-2] // union.shape[-2], latent_shape[-1] // union.shape[-1]
    union = union.repeat_interleave(ph, dim=-2).repeat_interleave(pw, dim=-1)
    return (1 - union)[:, None, None]


def flow_matching_loss(transformer, batch: dict, generators: list[torch.Generator], shift: float,
                       weighting: str, temporal_weight: float = 0.0) -> torch.Tensor:
    """MSE between the predicted flow and (noise - x0) at x_t = (1 - sigma) x0 + sigma * noise.

    `batch`: collated model inputs (`training.examples.collate`); one generator per example.
    `temporal_weight` > 0 adds the MSE of the error's change from one latent frame to the next,
    outside the face regions: an error that differs between frames is seen as flicker, one shared
    by neighbouring frames is not. Inside the faces the same term also damps the small true motions
    (listeners' eyes and brows), so it is left out there.
    """
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
    error = prediction.float() - (noise - latents).float()
    per_sample = (error ** 2).flatten(1).mean(1)
    if temporal_weight:
        change = error[:, :, 1:] - error[:, :, :-1]
        background = background_weights(batch["token_masks"], latents.shape)
        per_sample = per_sample + temporal_weight * (change ** 2 * background).flatten(1).mean(1)
    return (per_sample * timestep_weights(sigmas, weighting)).mean()
