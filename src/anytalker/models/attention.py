"""AnyTalker's attention modules, written as diffusers attention classes with swappable processors.

Layout convention: projected tokens are [B, L, heads, head_dim]; per-identity tensors carry an
identity axis right after the batch axis, [B, N, ...]. All identities run in one attention call
(the identity axis is folded into the batch), and the temporal rule of the audio tokens is applied
by grouping queries per latent frame instead of a dense [L, 257 + 32F] mask, so time and memory
grow linearly with the number of frames.

The grouping follows each token's latent-frame index (`latent_frame_index`, as `frame_runs`), not
its position, so it holds on a context-parallel shard that starts or ends inside a frame. The
audio-face attention is local per token given that index: it needs no communication, and its
processors carry no `_parallel_config` (diffusers' `enable_parallelism` gives one to
self-attention only).
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


FrameRuns = tuple[tuple[int, int, int], ...]


def latent_frame_index(num_frames: int, tokens_per_frame: int) -> torch.Tensor:
    """The latent frame of every token of a frame-major sequence, int64 [num_frames * tokens_per_frame]."""
    return torch.arange(num_frames).repeat_interleave(tokens_per_frame)


def frame_runs(token_frames: torch.Tensor) -> FrameRuns:
    """A per-token latent-frame index [L] as runs (first_frame, num_frames, tokens_per_frame).

    Tokens of one frame must be adjacent (frame-major order). Consecutive frames with as many
    tokens each share a run, so a whole sequence is one run and a shard cut inside frames has a
    short run at each cut end. One host read of the index (keep it on the CPU: no device sync).
    """
    frames, counts = torch.unique_consecutive(token_frames.cpu(), return_counts=True)
    runs: list[tuple[int, int, int]] = []
    for frame, count in zip(frames.tolist(), counts.tolist()):
        if runs and runs[-1][0] + runs[-1][1] == frame and runs[-1][2] == count:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, count)
        else:
            runs.append((frame, 1, count))
    return tuple(runs)


def _runs_of(query: torch.Tensor, token_frames: int | torch.Tensor | FrameRuns) -> FrameRuns:
    """`token_frames` as runs: an int is the frame count of a whole frame-major sequence."""
    if isinstance(token_frames, int):
        return ((0, token_frames, query.shape[1] // token_frames),)
    return frame_runs(token_frames) if torch.is_tensor(token_frames) else token_frames


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


def face_audio_attention_by_frame(
    query: torch.Tensor, face_key: torch.Tensor, face_value: torch.Tensor, audio_key: torch.Tensor,
    audio_value: torch.Tensor, token_frames: int | torch.Tensor | FrameRuns, backend=None,
) -> torch.Tensor:
    """`face_audio_attention_per_frame` for tokens of any frames: query [B, L, H, D] whose tokens
    lie in `token_frames` (runs, a per-token index [L], or the frame count of a whole sequence);
    audio_key/value [B, N, T, G, H, D], one group per latent frame. Returns [B, N, L, H, D]."""
    outputs, start = [], 0
    for first, count, per_frame in _runs_of(query, token_frames):
        size = count * per_frame
        outputs.append(face_audio_attention_per_frame(
            query[:, start:start + size], face_key, face_value, audio_key[:, :, first:first + count],
            audio_value[:, :, first:first + count], backend))
        start += size
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)


def temporal_audio_face_attention(
    query: torch.Tensor, face_key: torch.Tensor, face_value: torch.Tensor, audio_key: torch.Tensor,
    audio_value: torch.Tensor, token_frames: int | torch.Tensor | FrameRuns, temporal_stride: int = 4,
    backend=None,
) -> torch.Tensor:
    """AFCA's per-identity attention under the release's temporal rule, grouped by latent frame.

    query [B, L, H, D]; face_key/value [B, N, Lf, H, D]; audio_key/value [B, N, F, tokens, H, D]
    with F = stride*(T-1)+1; token_frames: the latent frames of the query tokens (runs, a
    per-token index [L], or T for a whole sequence). Returns [B, N, L, H, D], equal to attention
    under `build_dense_temporal_mask` with the face tokens always visible.
    """
    num_latent_frames = (audio_key.shape[2] - 1) // temporal_stride + 1
    # Latent frame 0 (the reference frame) sees the whole clip's audio as one group.
    def whole(audio):
        return audio.flatten(2, 3).unsqueeze(2)

    # Latent frame j >= 1 sees only its own `stride` video frames of audio.
    def groups(audio, first, count):
        grouped = audio[:, :, 1:].unflatten(2, (num_latent_frames - 1, temporal_stride)).flatten(3, 4)
        return grouped[:, :, first - 1:first - 1 + count]

    outputs, start = [], 0
    for first, count, per_frame in _runs_of(query, token_frames):
        if first == 0:
            outputs.append(face_audio_attention_per_frame(
                query[:, start:start + per_frame], face_key, face_value, whole(audio_key), whole(audio_value),
                backend))
            start, first, count = start + per_frame, 1, count - 1
        if count:
            size = count * per_frame
            outputs.append(face_audio_attention_per_frame(
                query[:, start:start + size], face_key, face_value, groups(audio_key, first, count),
                groups(audio_value, first, count), backend))
            start += size
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)


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
    Every attention here is local to the query tokens (no `_parallel_config`: see the module doc).
    """

    _attention_backend = None

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
        frame_runs: int | torch.Tensor | FrameRuns = 1,
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
                frame_runs, attn.temporal_stride, backend,
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
    Local to the query tokens (no `_parallel_config`: see the module doc).
    """

    _attention_backend = None

    def __call__(
        self,
        attn: "AnyTalkerAudioAttention",
        hidden_states: torch.Tensor,
        face_hidden_states: torch.Tensor,
        audio_hidden_states: torch.Tensor,
        face_token_masks: torch.Tensor | None = None,
        frame_runs: int | torch.Tensor | FrameRuns | None = None,
    ) -> torch.Tensor:
        heads = attn.heads
        query = _split_heads(attn.to_q(hidden_states), heads)
        audio_key, audio_value = attn.to_kv(audio_hidden_states).chunk(2, dim=-1)
        per_identity = face_audio_attention_by_frame(
            query,
            _split_heads(attn.to_k_face(face_hidden_states), heads),
            _split_heads(attn.to_v_face(face_hidden_states), heads),
            _split_heads(audio_key, heads), _split_heads(audio_value, heads),
            audio_hidden_states.shape[2] if frame_runs is None else frame_runs, self._attention_backend,
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

    def forward(self, hidden_states, face_hidden_states, audio_hidden_states, face_token_masks=None,
                frame_runs=None):
        return self.processor(self, hidden_states, face_hidden_states, audio_hidden_states, face_token_masks,
                              frame_runs)
