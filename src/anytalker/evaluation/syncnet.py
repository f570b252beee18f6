"""SyncNet (`syncnet_v2`, Chung & Zisserman 2016) in PyTorch, loading the public `syncnet_v2.model`.

The layers, their order and so the state-dict keys are those of syncnet_python's `SyncNetModel.S`:

    netcnnaud.{0,4,8,11,14,18}.{weight,bias}              Conv2d  1->64->192->384->256->256->512
    netcnnaud.{1,5,9,12,15,19}.{weight,bias,running_mean,running_var}   BatchNorm2d
    netfcaud.{0,3}.{weight,bias}  Linear 512->512->1024;  netfcaud.1.*  BatchNorm1d(512)
    netcnnlip.{0,4,8,11,14,18}.{weight,bias}              Conv3d  3->96->256->256->256->256->512
    netcnnlip.{1,5,9,12,15,19}.*                          BatchNorm3d
    netfclip.{0,3}.{weight,bias}  Linear 512->512->1024;  netfclip.1.*  BatchNorm1d(512)

88 tensors in all (`num_batches_tracked` buffers may be absent: the file predates them; they are
not used in eval).

Inputs, as syncnet_python feeds them:
- lips: float [B, 3, 5, 224, 224], BGR channel order, values 0..255 (no normalisation): five
  consecutive 25-fps face crops.
- audio: float [B, 1, 13, 20], 13 MFCCs x 20 steps of 10 ms (0.2 s, the same five video frames).
Both give a 1024-d embedding; lip-sync is judged by their Euclidean distance.
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["SyncNet", "load_syncnet"]


def _conv_bn_relu(conv: nn.Module, bn: nn.Module) -> list[nn.Module]:
    return [conv, bn, nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """The syncnet_v2 audio and lip streams (module names match the released state dict)."""

    def __init__(self, embedding_dim: int = 1024):
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64)),
            nn.MaxPool2d(kernel_size=1, stride=1),
            *_conv_bn_relu(nn.Conv2d(64, 192, 3, padding=1), nn.BatchNorm2d(192)),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            *_conv_bn_relu(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_conv_bn_relu(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_conv_bn_relu(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256)),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *_conv_bn_relu(nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512)),  # [B, 512, 1, 1]
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                      nn.Linear(512, embedding_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                      nn.Linear(512, embedding_dim))
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(96)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),  # [B, 512, 1, 1, 1]
        )

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """[B, 1, 13, 20] MFCC windows -> [B, 1024]."""
        if mfcc.ndim != 4 or tuple(mfcc.shape[1:]) != (1, 13, 20):
            raise ValueError(f"SyncNet audio input must be [B, 1, 13, 20], got {list(mfcc.shape)}")
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 3, 5, 224, 224] BGR 0..255 face crops -> [B, 1024]."""
        if frames.ndim != 5 or tuple(frames.shape[1:]) != (3, 5, 224, 224):
            raise ValueError(f"SyncNet lip input must be [B, 3, 5, 224, 224], got {list(frames.shape)}")
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def load_syncnet(path: str | os.PathLike | None, device: str | torch.device = "cpu") -> SyncNet:
    """SyncNet in eval mode from a syncnet_v2.model file (see the module doc for its keys).

    MissingWeightsError when the file is absent; ValueError listing missing / unexpected keys when
    the file is not a syncnet_v2 state dict (e.g. a SyncNet from another codebase such as Wav2Lip's).
    """
    from .weights import require_weights

    path = require_weights("syncnet", path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model = SyncNet()
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    if expected != given:
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        raise ValueError(f"{path} is not a syncnet_v2 state dict: {len(missing)} missing keys "
                         f"{missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}")
    model.load_state_dict(state, strict=False)  # strict on everything but num_batches_tracked (checked above)
    return model.eval().to(device)
