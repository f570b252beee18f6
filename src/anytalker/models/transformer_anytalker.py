"""AnyTalkerTransformer: the Wan2.1 image-to-video DiT with AnyTalker's audio-face path.

Two released variants, chosen by `audio_attention`:
- "fused" (1.3B): AFCA inside every block's cross-attention;
- "separate" (14B): a per-latent-frame audio cross-attention after the I2V cross-attention.

Context parallelism (`_cp_plan`, diffusers' `enable_parallelism`): the tokens, their rotary
embeddings, face masks and latent-frame index are split on the sequence axis; self-attention runs
Ulysses, every other attention is local to a rank's tokens; the output is gathered.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
from diffusers.loaders import PeftAdapterMixin
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention import AttentionMixin, FeedForward
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanImageEmbedding,
    WanRotaryPosEmbed,
    WanTimeTextImageEmbedding,
)
from diffusers.utils import apply_lora_scale

from .attention import AnyTalkerAudioAttention, AnyTalkerCrossAttention, FrameRuns, frame_runs, latent_frame_index
from .audio_projection import AudioFrameProjector, AudioLatentFrameProjector

AUDIO_ATTENTION_VARIANTS = ("fused", "separate")


class Float32Timesteps(Timesteps):
    """Wan's sinusoidal timestep features [cos | sin], computed in float32 as the release does.

    The release casts t to float32 and builds the frequencies 10000^(-k/half) from a float32
    `arange(half) / half` (parity README §3.4); cos and sin of the float32 phase follow. This
    matches the golden vectors at float32 noise; computing the phase in float64 is ~1e-5 off at
    t near 1000.
    """

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        position = timesteps.to(torch.float32)
        exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device).div(half)
        phase = torch.outer(position, torch.pow(10000, -exponent))
        return torch.cat([phase.cos(), phase.sin()], dim=-1)


class TokenFrameIndex(nn.Module):
    """The latent frame of every token, int64 [L] on the CPU (reading it needs no device sync).

    A module so that the context-parallel plan splits its output with the tokens: the audio-face
    attention groups a shard's queries by this index, not by their position in the shard.
    """

    def forward(self, num_frames: int, tokens_per_frame: int) -> torch.Tensor:
        return latent_frame_index(num_frames, tokens_per_frame)


class TokenMasks(nn.Module):
    """Face masks on the token grid [B, N, T, h, w] (or [B, N, h, w] for every frame) -> [B, N, L],
    frame-major like the tokens; a module so that the context-parallel plan splits its output."""

    def forward(self, face_token_masks: torch.Tensor, num_frames: int) -> torch.Tensor:
        if face_token_masks.ndim == 4:
            face_token_masks = face_token_masks.unsqueeze(2).expand(-1, -1, num_frames, -1, -1)
        return face_token_masks.flatten(2)


class AnyTalkerTransformerBlock(nn.Module):
    """Wan block (self-attn, cross-attn, FFN with AdaLN modulation) carrying the audio-face path.

    Submodule names follow diffusers' WanTransformerBlock so Wan tooling (LoRA targets, hooks)
    applies: norm1/attn1 self-attention, norm2/attn2 cross-attention, norm3/ffn feed-forward.
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float, audio_attention: str,
                 audio_token_dim: int, temporal_stride: int):
        super().__init__()
        self.audio_attention = audio_attention
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = WanAttention(dim=dim, heads=num_heads, dim_head=dim // num_heads, eps=eps,
                                  processor=WanAttnProcessor())
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.attn2 = AnyTalkerCrossAttention(dim, num_heads, eps, audio_face=audio_attention == "fused",
                                             temporal_stride=temporal_stride)
        if audio_attention == "separate":
            self.norm_audio = nn.LayerNorm(dim, eps=eps)
            self.audio_attn = AnyTalkerAudioAttention(dim, num_heads, audio_token_dim)
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        image_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        face_hidden_states: torch.Tensor | None,
        audio_hidden_states: torch.Tensor | None,
        face_token_masks: torch.Tensor | None,
        token_frames: FrameRuns,
    ) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table + temb.float()
        ).chunk(6, dim=1)

        norm_hidden = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        attn_output = self.attn1(norm_hidden, None, None, rotary_emb)
        hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)

        fused = self.audio_attention == "fused" and face_hidden_states is not None
        hidden_states = hidden_states + self.attn2(
            self.norm2(hidden_states.float()).type_as(hidden_states), encoder_hidden_states, None, None,
            image_hidden_states=image_hidden_states,
            face_hidden_states=face_hidden_states if fused else None,
            audio_hidden_states=audio_hidden_states if fused else None,
            face_token_masks=face_token_masks, frame_runs=token_frames,
        )
        if self.audio_attention == "separate" and face_hidden_states is not None:
            hidden_states = hidden_states + self.audio_attn(
                self.norm_audio(hidden_states), face_hidden_states, audio_hidden_states, face_token_masks,
                token_frames,
            )

        norm_hidden = (self.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(hidden_states)
        ff_output = self.ffn(norm_hidden)
        return (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)


# diffusers' step caches (first-block, MagCache, ...) find blocks by exact class in this registry:
# a block returns its hidden states alone, and reads no encoder states it would return.
TransformerBlockRegistry.register(AnyTalkerTransformerBlock, TransformerBlockMetadata(
    return_hidden_states_index=0, return_encoder_hidden_states_index=None))


class AnyTalkerTransformer(ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin):
    r"""Wan2.1 I2V diffusion transformer with AnyTalker's audio-face conditioning for N identities.

    Args:
        audio_attention: "fused" (AFCA in cross-attention, the 1.3B release) or "separate"
            (per-latent-frame audio cross-attention, the 14B release).
        audio_window, audio_layers, audio_channels: shape of one video frame's wav2vec2 window
            (5 x 12 x 768 in the releases).
        audio_hidden_dim: width of the audio projector's MLP.
        audio_tokens_per_frame: audio tokens per video frame ("fused") or per latent frame ("separate").
        audio_token_dim: width of audio tokens in the "separate" variant (768); "fused" uses the model width.
        temporal_stride: video frames per latent frame (the Wan VAE's 4).
        text_len: text tokens the model attends to; shorter prompt features are zero-padded.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "face_embedder", "norm"]
    _no_split_modules = ["AnyTalkerTransformerBlock"]
    _keep_in_fp32_modules = ["time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"]
    _repeated_blocks = ["AnyTalkerTransformerBlock"]
    # Split on the sequence axis: rotary outputs, the first block's tokens, the face masks and the
    # latent-frame index (both used by every block); text / CLIP / face / audio context is not split.
    _cp_plan = {
        "rope": {
            0: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
            1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
        },
        "blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
        "token_masks": {0: ContextParallelInput(split_dim=2, expected_dims=3, split_output=True)},
        "token_frames": {0: ContextParallelInput(split_dim=0, expected_dims=1, split_output=True)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        in_channels: int = 36,
        out_channels: int = 16,
        text_dim: int = 4096,
        text_len: int = 512,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        eps: float = 1e-6,
        image_dim: int = 1280,
        face_dim: int = 1280,
        audio_attention: str = "fused",
        audio_window: int = 5,
        audio_layers: int = 12,
        audio_channels: int = 768,
        audio_hidden_dim: int = 512,
        audio_tokens_per_frame: int = 32,
        audio_token_dim: int = 768,
        temporal_stride: int = 4,
        rope_max_seq_len: int = 1024,
        use_face_masks: bool = True,
    ) -> None:
        super().__init__()
        if audio_attention not in AUDIO_ATTENTION_VARIANTS:
            raise ValueError(f"audio_attention must be one of {AUDIO_ATTENTION_VARIANTS}, got {audio_attention!r}")
        dim = num_attention_heads * attention_head_dim

        self.rope = WanRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        self.token_frames, self.token_masks = TokenFrameIndex(), TokenMasks()
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=dim, time_freq_dim=freq_dim, time_proj_dim=dim * 6, text_embed_dim=text_dim, image_embed_dim=image_dim
        )
        self.condition_embedder.timesteps_proj = Float32Timesteps(freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        # Face crops are CLIP-encoded like the reference image but get their own projector.
        self.face_embedder = WanImageEmbedding(face_dim, dim)
        projector_args = (audio_window, audio_layers, audio_channels, audio_hidden_dim, audio_tokens_per_frame)
        if audio_attention == "fused":
            self.audio_projector = AudioFrameProjector(*projector_args, out_dim=dim)
        else:
            self.audio_projector = AudioLatentFrameProjector(*projector_args, out_dim=audio_token_dim,
                                                             temporal_stride=temporal_stride)
        self.blocks = nn.ModuleList([
            AnyTalkerTransformerBlock(dim, ffn_dim, num_attention_heads, eps, audio_attention, audio_token_dim,
                                      temporal_stride)
            for _ in range(num_layers)
        ])
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, out_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.gradient_checkpointing = False

    def check_inputs(self, hidden_states, encoder_hidden_states, encoder_hidden_states_image, face_embeds,
                     audio_embeds, face_token_masks) -> None:
        """Raises ValueError naming the first inconsistency; cheap, runs before any heavy work."""
        cfg = self.config
        if hidden_states.ndim != 5 or hidden_states.shape[1] != cfg.in_channels:
            raise ValueError(f"hidden_states must be [B, {cfg.in_channels}, T, H, W] (noisy latent + condition "
                             f"channels), got {list(hidden_states.shape)}")
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = cfg.patch_size
        if frames % p_t or height % p_h or width % p_w:
            raise ValueError(f"latent size {frames}x{height}x{width} is not divisible by the patch size {p_t}x{p_h}x{p_w}")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != cfg.text_dim:
            raise ValueError(f"encoder_hidden_states must be [B, tokens, {cfg.text_dim}], got "
                             f"{list(encoder_hidden_states.shape)}")
        if encoder_hidden_states.shape[1] > cfg.text_len:
            raise ValueError(f"text features have {encoder_hidden_states.shape[1]} tokens; the model takes at most "
                             f"text_len={cfg.text_len}")
        if encoder_hidden_states_image is None or encoder_hidden_states_image.ndim != 3 \
                or encoder_hidden_states_image.shape[-1] != cfg.image_dim:
            shape = None if encoder_hidden_states_image is None else list(encoder_hidden_states_image.shape)
            raise ValueError(f"encoder_hidden_states_image (CLIP tokens) must be [B, tokens, {cfg.image_dim}], got {shape}")
        if (face_embeds is None) != (audio_embeds is None):
            raise ValueError("face_embeds and audio_embeds must be given together (one face and one track per identity)")
        if face_embeds is None:
            if face_token_masks is not None:
                raise ValueError("face_token_masks were given without face_embeds and audio_embeds")
            return
        if face_embeds.ndim != 4 or face_embeds.shape[-1] != cfg.face_dim:
            raise ValueError(f"face_embeds must be [B, N, tokens, {cfg.face_dim}], got {list(face_embeds.shape)}")
        window = (cfg.audio_window, cfg.audio_layers, cfg.audio_channels)
        if audio_embeds.ndim != 6 or tuple(audio_embeds.shape[3:]) != window:
            raise ValueError(f"audio_embeds must be [B, N, F, {', '.join(map(str, window))}] (windowed wav2vec2 "
                             f"features per identity), got {list(audio_embeds.shape)}")
        counts = {"face_embeds": face_embeds.shape[1], "audio_embeds": audio_embeds.shape[1]}
        if face_token_masks is not None:
            counts["face_token_masks"] = face_token_masks.shape[1]
        if len(set(counts.values())) != 1:
            raise ValueError(f"identity counts disagree: {counts}; every identity needs one face, one audio track "
                             f"and one mask")
        for name, tensor in (("face_embeds", face_embeds), ("audio_embeds", audio_embeds),
                             ("face_token_masks", face_token_masks)):
            if tensor is not None and tensor.shape[0] != batch:
                raise ValueError(f"{name} has batch size {tensor.shape[0]}, hidden_states has {batch}")
        audio_frames, stride = audio_embeds.shape[2], cfg.temporal_stride
        if (audio_frames - 1) % stride:
            raise ValueError(f"audio has {audio_frames} video frames; the frame count must be {stride}n+1")
        if audio_frames != stride * (frames - 1) + 1:
            raise ValueError(f"audio covers {audio_frames} video frames but the latent has {frames} frames, which "
                             f"decode to {stride * (frames - 1) + 1}: audio length and video length disagree")
        if face_token_masks is not None:
            grid = (frames // p_t, height // p_h, width // p_w)
            if face_token_masks.ndim not in (4, 5) or tuple(face_token_masks.shape[-2:]) != grid[1:] or (
                    face_token_masks.ndim == 5 and face_token_masks.shape[2] != grid[0]):
                raise ValueError(f"face_token_masks must be [B, N, {grid[0]}, {grid[1]}, {grid[2]}] or "
                                 f"[B, N, {grid[1]}, {grid[2]}] on the token grid, got {list(face_token_masks.shape)}")

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor,
        face_embeds: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
        face_token_masks: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predicts the flow for a batch of I2V latents conditioned on N identities.

        Args:
            hidden_states: [B, in_channels, T, H, W]: noisy latent concatenated with the condition
                channels (4 mask channels + 16 reference-latent channels in the releases).
            timestep: [B] diffusion timesteps.
            encoder_hidden_states: [B, Ltext <= text_len, text_dim] umT5 features.
            encoder_hidden_states_image: [B, 257, image_dim] CLIP tokens of the whole reference image.
            face_embeds: [B, N, 257, face_dim] CLIP tokens of each identity's face crop.
            audio_embeds: [B, N, F, window, layers, channels] windowed wav2vec2 features per
                identity, F = 4(T-1)+1 video frames.
            face_token_masks: [B, N, T, H/2, W/2] (or [B, N, H/2, W/2] for all frames) soft face-region
                masks on the token grid; None applies every identity's audio everywhere.
        """
        self.check_inputs(hidden_states, encoder_hidden_states, encoder_hidden_states_image, face_embeds,
                          audio_embeds, face_token_masks)
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)

        rotary_emb = self.rope(hidden_states)
        hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

        # The release zero-pads prompt features to text_len before embedding them, so the padding
        # rows become real (bias-derived) tokens that are attended to.
        pad = self.config.text_len - encoder_hidden_states.shape[1]
        encoder_hidden_states = nn.functional.pad(encoder_hidden_states, (0, 0, 0, pad))
        temb, timestep_proj, text_tokens, image_tokens = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image
        )
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        if self.config.audio_attention == "separate":
            # Quirk of the 14B release, kept for its weights: the text attention's context is
            # [CLIP tokens ; text tokens], while the image branch also sees the CLIP tokens.
            text_tokens = torch.cat([image_tokens, text_tokens], dim=1)

        face_tokens = audio_tokens = masks = None
        if face_embeds is not None:
            face_tokens = self.face_embedder(face_embeds)
            audio_tokens = self.audio_projector(audio_embeds.to(self.audio_projector.proj1.weight.dtype))
            # use_face_masks=False is the ablation of AFCA without its face-region masks (every
            # identity's audio reaches every token); the releases use them.
            if face_token_masks is not None and self.config.use_face_masks:
                masks = self.token_masks(face_token_masks, grid[0])  # [B, N, L]
        # Read once per forward: the audio-face attention groups this rank's tokens by frame.
        token_frames = frame_runs(self.token_frames(grid[0], grid[1] * grid[2]))

        block_args = (text_tokens, image_tokens, timestep_proj, rotary_emb, face_tokens, audio_tokens, masks,
                      token_frames)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, *block_args)
            else:
                hidden_states = block(hidden_states, *block_args)

        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)

        hidden_states = hidden_states.reshape(batch, *grid, p_t, p_h, p_w, -1)
        output = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    @classmethod
    def from_official(cls, checkpoint, config, torch_dtype: torch.dtype | None = None,
                      base_checkpoint=None) -> "AnyTalkerTransformer":
        """Loads a release DiT file as it is, strictly (every key used, every parameter filled).

        Args:
            checkpoint: `.pth` (weights under "model") or `.safetensors` path, or a state dict with the
                release's key names.
            config: the release's DiT config (`config_af2v_1_3B.json` style) as a dict or path.
            torch_dtype: cast to this dtype while loading; None keeps the file's dtype, as the release does.
            base_checkpoint: optional Wan2.1 DiT (e.g. Wan2.1-Fun-1.3B-InP's
                `diffusion_pytorch_model.safetensors`, or a shard folder) for weights `checkpoint` lacks.
        """
        from .official_checkpoint import load_official_transformer

        return load_official_transformer(cls, checkpoint, config, torch_dtype, base_checkpoint)
