"""AnyTalker's attention modules, written as diffusers attention classes with swappable processors.

Layout convention: projected tokens are [B, L, heads, head_dim]; per-identity tensors carry an
identity axis right after the batch axis, [B, N, ...]. All identities run in one attention call
(the identity axis is folded into the batch), and the temporal rule of the audio tokens is applied
by grouping queries per latent frame instead of a dense [L, 257 + 32F] mask, so time and memory
grow linearly with the number of frames.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttention


def build_dense_temporal_mask(num_latent_frames: int, tokens_per_latent_frame: int, num_audio_frames: int,
                              audio_tokens_per_frame: int, temporal_stride: int = 4) -> torch.Tensor:
    """The release's [L, audio_tokens] boolean mask (True = attend): the reference formulation.

    Latent frame 0 sees every audio frame; latent frame j >= 1 sees video frames
    stride*(j-1)+1 .. stride*j. Used to check the grouped computation and in benchmarks; the model
    itself never materialises it.
    """
    latent_of_audio_frame = (torch.arange(num_audio_frames) + temporal_stride - 1) // temporal_stride
    latent_of_query = torch.arange(num_latent_frames).repeat_interleave(tokens_per_latent_frame)
    mask = latent_of_query[:, None] == latent_of_audio_frame[None, :]
    mask[:tokens_per_latent_frame] = True
    return mask.repeat_interleave(audio_tokens_per_frame, dim=1)


def face_audio_attention_per_frame(
    query: torch.Tensor, face_key: torch.Tensor, face_value: torch.Tensor, audio_key: torch.Tensor,
    audio_value: torch.Tensor, backend=None,
) -> torch.Tensor:
    """Each latent frame's queries attend, per identity, to [face tokens ; that frame's audio tokens].

    query [B, T*S, H, D] (frame-major tokens); face_key/value [B, N, Lf, H, D];
    audio_key/value [B, N, T, G, H, D] (G audio tokens per latent frame). Returns [B, N, T*S, H, D].
    Identities and frames are folded into the batch axis: a single attention call.
    """
    batch, num_ids, frames = audio_key.shape[:3]
    seq_len = query.shape[1]
    queries = query.unsqueeze(1).expand(batch, num_ids, *query.shape[1:]).unflatten(2, (frames, -1))

    def keys(face, audio):
        face = face.unsqueeze(2).expand(-1, -1, frames, -1, -1, -1)
        return torch.cat([face, audio], dim=3).flatten(0, 2)

    out = dispatch_attention_fn(
        queries.flatten(0, 2), keys(face_key, audio_key), keys(face_value, audio_value),
        attn_mask=None, dropout_p=0.0, is_causal=False, backend=backend,
    )
    return out.reshape(batch, num_ids, seq_len, *out.shape[-2:])


def temporal_audio_face_attention(
    query: torch.Tensor, face_key: torch.Tensor, face_value: torch.Tensor, audio_key: torch.Tensor,
    audio_value: torch.Tensor, num_latent_frames: int, temporal_stride: int = 4, backend=None,
) -> torch.Tensor:
    """AFCA's per-identity attention under the release's temporal rule, grouped by latent frame.

    query [B, L, H, D]; face_key/value [B, N, Lf, H, D]; audio_key/value [B, N, F, tokens, H, D]
    with F = stride*(T-1)+1. Returns [B, N, L, H, D], equal to attention under
    `build_dense_temporal_mask` with the face tokens always visible.
    """
    per_frame = query.shape[1] // num_latent_frames
    # Latent frame 0 (the reference frame) sees the whole clip's audio as one group.
    outputs = [face_audio_attention_per_frame(
        query[:, :per_frame], face_key, face_value, audio_key.flatten(2, 3).unsqueeze(2),
        audio_value.flatten(2, 3).unsqueeze(2), backend)]
    if num_latent_frames > 1:
        # Latent frame j >= 1 sees only its own `stride` video frames of audio.
        def groups(audio):
            return audio[:, :, 1:].unflatten(2, (num_latent_frames - 1, temporal_stride)).flatten(3, 4)

        outputs.append(face_audio_attention_per_frame(
            query[:, per_frame:], face_key, face_value, groups(audio_key), groups(audio_value), backend))
    return torch.cat(outputs, dim=2)


def _split_heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    return tensor.unflatten(-1, (heads, -1))


def _apply_token_masks(per_identity: torch.Tensor, face_token_masks: torch.Tensor | None) -> torch.Tensor:
    """[B, N, L, H, D] per-identity outputs -> [B, L, H*D]: masked by each face region, summed."""
    per_identity = per_identity.flatten(-2)
    if face_token_masks is not None:
        per_identity = per_identity * face_token_masks.unsqueeze(-1).to(per_identity.dtype)
    return per_identity.sum(dim=1)


class AnyTalkerCrossAttnProcessor:
    """Wan I2V cross-attention (text + CLIP image) plus, when the module has it, fused AFCA.

    output = to_out(A_text + A_image + sum_i mask_i * A_face_audio_i), one shared query.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: "AnyTalkerCrossAttention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        rotary_emb=None,
        image_hidden_states: torch.Tensor | None = None,
        face_hidden_states: torch.Tensor | None = None,
        audio_hidden_states: torch.Tensor | None = None,
        face_token_masks: torch.Tensor | None = None,
        num_latent_frames: int = 1,
    ) -> torch.Tensor:
        heads, backend = attn.heads, self._attention_backend
        query = _split_heads(attn.norm_q(attn.to_q(hidden_states)), heads)

        def attend(key, value):
            return dispatch_attention_fn(query, key, value, attn_mask=attention_mask, backend=backend)

        out = attend(_split_heads(attn.norm_k(attn.to_k(encoder_hidden_states)), heads),
                     _split_heads(attn.to_v(encoder_hidden_states), heads)).flatten(2)
        if image_hidden_states is not None:
            out = out + attend(_split_heads(attn.norm_added_k(attn.add_k_proj(image_hidden_states)), heads),
                               _split_heads(attn.add_v_proj(image_hidden_states), heads)).flatten(2)
        if face_hidden_states is not None:
            per_identity = temporal_audio_face_attention(
                query,
                _split_heads(attn.norm_k_face(attn.to_k_face(face_hidden_states)), heads),
                _split_heads(attn.to_v_face(face_hidden_states), heads),
                _split_heads(attn.norm_k_audio(attn.to_k_audio(audio_hidden_states)), heads),
                _split_heads(attn.to_v_audio(audio_hidden_states), heads),
                num_latent_frames, attn.temporal_stride, backend,
            )
            out = out + _apply_token_masks(per_identity, face_token_masks)
        out = out.type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class AnyTalkerCrossAttention(WanAttention):
    """WanAttention for I2V cross-attention, optionally with AFCA's face and audio K/V projections."""

    _default_processor_cls = AnyTalkerCrossAttnProcessor
    _available_processors = [AnyTalkerCrossAttnProcessor]

    def __init__(self, dim: int, heads: int, eps: float, audio_face: bool, temporal_stride: int = 4):
        super().__init__(
            dim=dim, heads=heads, dim_head=dim // heads, eps=eps, added_kv_proj_dim=dim,
            cross_attention_dim_head=dim // heads, processor=AnyTalkerCrossAttnProcessor(),
        )
        self.temporal_stride = temporal_stride
        if audio_face:
            self.to_k_face, self.to_v_face = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.norm_k_face = nn.RMSNorm(dim, eps=eps)
            self.to_k_audio, self.to_v_audio = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.norm_k_audio = nn.RMSNorm(dim, eps=eps)


class AnyTalkerAudioAttnProcessor:
    """The 14B release's separate audio cross-attention (MultiTalk style), grouped per latent frame.

    Each latent frame's queries attend, per identity, to [face tokens ; that frame's 32 audio
    tokens]; no q/k norms; per-identity outputs are masked by face region, summed, projected.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: "AnyTalkerAudioAttention",
        hidden_states: torch.Tensor,
        face_hidden_states: torch.Tensor,
        audio_hidden_states: torch.Tensor,
        face_token_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        heads = attn.heads
        query = _split_heads(attn.to_q(hidden_states), heads)
        audio_key, audio_value = attn.to_kv(audio_hidden_states).chunk(2, dim=-1)
        per_identity = face_audio_attention_per_frame(
            query,
            _split_heads(attn.to_k_face(face_hidden_states), heads),
            _split_heads(attn.to_v_face(face_hidden_states), heads),
            _split_heads(audio_key, heads), _split_heads(audio_value, heads), self._attention_backend,
        )
        out = _apply_token_masks(per_identity, face_token_masks).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class AnyTalkerAudioAttention(nn.Module, AttentionModuleMixin):
    """Separate audio cross-attention block module of the 14B release (`audio_cross_attn`)."""

    _default_processor_cls = AnyTalkerAudioAttnProcessor
    _available_processors = [AnyTalkerAudioAttnProcessor]

    def __init__(self, dim: int, heads: int, audio_dim: int, processor=None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(audio_dim, 2 * dim)  # [K | V], as the release's kv_linear
        self.to_k_face, self.to_v_face = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.set_processor(processor or AnyTalkerAudioAttnProcessor())

    def forward(self, hidden_states, face_hidden_states, audio_hidden_states, face_token_masks=None):
        return self.processor(self, hidden_states, face_hidden_states, audio_hidden_states, face_token_masks)
