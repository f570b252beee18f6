"""AnyTalker's new modules on top of a plain Wan2.1 I2V DiT (the start of stage-1 training).

The release's own initialisation is not published; ours makes the audio-face path start as a
no-op that can learn: the face projector and the face/audio key projections start as copies of
the CLIP-image branch they mirror, and the value projections (fused) or output projection
(separate) start at zero, so the initial model is exactly the Wan I2V model.
"""

from __future__ import annotations

import torch

from ..models import AnyTalkerTransformer
from ..models.official_checkpoint import RenamedStateDict, config_from_official, open_checkpoint
from ..utils.checkpoints import CheckpointError

AUDIO_FACE_MARKERS = ("face", "audio")


def is_audio_face_parameter(name: str) -> bool:
    """AnyTalker's additions to Wan: face/audio projections, projectors and the separate attention."""
    return any(marker in name for marker in AUDIO_FACE_MARKERS)


@torch.no_grad()
def init_from_wan(wan_checkpoint, official_config, seed: int = 0) -> AnyTalkerTransformer:
    """AnyTalkerTransformer with Wan's weights and freshly initialised audio/face modules."""
    torch.manual_seed(seed)
    model = AnyTalkerTransformer.from_config(config_from_official(official_config))
    state = RenamedStateDict(open_checkpoint(wan_checkpoint, "Wan2.1 DiT checkpoint")[0])
    own = model.state_dict()
    unexpected = [key for key in state if key not in own]
    missing = [key for key in own if key not in state and not is_audio_face_parameter(key)]
    if unexpected or missing:
        raise CheckpointError(f"not a Wan2.1 I2V DiT of this size: missing {missing[:8]}, unexpected {unexpected[:8]}")
    for key in state:
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise CheckpointError(f"{key}: file {tuple(state[key].shape)} vs model {tuple(own[key].shape)}")
        own[key].copy_(state[key])
    model.face_embedder.load_state_dict(model.condition_embedder.image_embedder.state_dict())
    for block in model.blocks:
        cross = block.attn2
        if model.config.audio_attention == "fused":
            for kind in ("face", "audio"):
                getattr(cross, f"to_k_{kind}").load_state_dict(cross.add_k_proj.state_dict())
                getattr(cross, f"norm_k_{kind}").load_state_dict(cross.norm_added_k.state_dict())
                getattr(cross, f"to_v_{kind}").weight.zero_()
                getattr(cross, f"to_v_{kind}").bias.zero_()
        else:
            block.audio_attn.to_out[0].weight.zero_()
            block.audio_attn.to_out[0].bias.zero_()
    return model
