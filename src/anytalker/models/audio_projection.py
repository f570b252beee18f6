"""Audio projectors: windowed wav2vec2 features -> audio tokens.

Input layout everywhere: [..., F, window, layers, channels] (F video frames, each stacked with
its +-2 neighbours, 12 wav2vec2 layers of 768 channels in the releases).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class AudioFrameProjector(nn.Module):
    """Per video frame: one window -> `num_tokens` tokens of width `out_dim` (the 1.3B release)."""

    def __init__(self, window: int, layers: int, channels: int, hidden_dim: int, num_tokens: int, out_dim: int):
        super().__init__()
        self.num_tokens, self.out_dim = num_tokens, out_dim
        self.proj1 = nn.Linear(window * layers * channels, hidden_dim)
        self.proj2 = nn.Linear(hidden_dim, hidden_dim)
        self.proj3 = nn.Linear(hidden_dim, num_tokens * out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=1e-5)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # [..., F, window, layers, C] -> [..., F, num_tokens, out_dim]
        hidden = F.relu(self.proj1(audio.flatten(-3)))
        hidden = self.proj3(F.relu(self.proj2(hidden)))
        return self.norm(hidden.unflatten(-1, (self.num_tokens, self.out_dim)))


def pack_latent_frame_windows(audio: torch.Tensor, temporal_stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Splits [..., F, 5, layers, C] windows into latent-frame groups (the 14B release's packing).

    Latent frame 0 is video frame 0 and keeps its 5-entry window. Latent frame j >= 1 covers
    video frames a..a+3 (a = 4(j-1)+1) and takes 8 entries: the left half of a's window, the
    centre of a+1 and a+2, the right half of a+3, i.e. the audio of exactly those 4 frames plus
    the +-2 context at the group's edges.
    Returns (first [..., 5, layers, C], rest [..., T-1, 8, layers, C]).
    """
    num_frames, window = audio.shape[-4], audio.shape[-3]
    if window != 5 or (num_frames - 1) % temporal_stride:
        raise ValueError(f"latent packing needs 5-entry windows and 4n+1 frames, got {window} and {num_frames}")
    first = audio[..., 0, :, :, :]
    groups = audio[..., 1:, :, :, :].unflatten(-4, (-1, temporal_stride))  # [..., T-1, 4, 5, L, C]
    rest = torch.cat(
        [groups[..., 0, :3, :, :], groups[..., 1:3, 2, :, :], groups[..., 3, 2:, :, :]], dim=-3
    )
    return first, rest


class AudioLatentFrameProjector(nn.Module):
    """Per latent frame: packed windows -> `num_tokens` tokens of width `out_dim` (the 14B release)."""

    def __init__(
        self, window: int, layers: int, channels: int, hidden_dim: int, num_tokens: int, out_dim: int,
        temporal_stride: int = 4,
    ):
        super().__init__()
        self.num_tokens, self.out_dim, self.temporal_stride = num_tokens, out_dim, temporal_stride
        packed_entries = 2 * window - 2  # 3 + 1 + 1 + 3 entries for stride 4
        self.proj1 = nn.Linear(window * layers * channels, hidden_dim)
        self.proj1_vf = nn.Linear(packed_entries * layers * channels, hidden_dim)
        self.proj2 = nn.Linear(hidden_dim, hidden_dim)
        self.proj3 = nn.Linear(hidden_dim, num_tokens * out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=1e-5)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # [..., F, window, layers, C] -> [..., T, num_tokens, out_dim] with T = (F - 1) / 4 + 1
        first, rest = pack_latent_frame_windows(audio, self.temporal_stride)
        hidden = torch.cat([self.proj1(first.flatten(-3)).unsqueeze(-2), self.proj1_vf(rest.flatten(-3))], dim=-2)
        hidden = self.proj3(F.relu(self.proj2(F.relu(hidden))))
        return self.norm(hidden.unflatten(-1, (self.num_tokens, self.out_dim)))
