"""`random-tiny`: a randomly initialised miniature of every AnyTalker component, built in memory.

Same classes and code paths as the released model at toy sizes; its output is noise. It lets the
CLI and the tests run the whole pipeline without weights, in seconds on a CPU.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
)

from ..encoders.vae import diffusers_vae_config
from ..models import AnyTalkerTransformer
from .scheduling import default_scheduler

TINY_WORDS = ("a an the man woman men women person people two three talk talking speak speaking listen "
              "listening to each other in room at table and with smile smiling look looking nod happily "
              "calmly studio office outdoors cartoon puppet puppets face faces").split()


def tiny_tokenizer(words=TINY_WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with umT5's special ids (pad 0, </s> 1, appended to every text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = ["<pad>", "</s>", "<unk>", *dict.fromkeys(words)]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def random_tiny_components(seed: int = 0, vae_dim: int = 4) -> dict:
    """Every pipeline component at toy size, randomly initialised (deterministic for a seed)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1))
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        image_size=28, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, hidden_act="gelu", layer_norm_eps=1e-5))
    audio_encoder = Wav2Vec2Model(Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, do_stable_layer_norm=False,
        feat_extract_norm="group"))
    vae = AutoencoderKLWan(**diffusers_vae_config({"dim": vae_dim}))
    transformer = AnyTalkerTransformer(
        num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2, text_dim=32, text_len=32,
        image_dim=32, face_dim=32, audio_layers=2, audio_channels=32, audio_hidden_dim=32,
        audio_tokens_per_frame=4)
    return {"transformer": transformer.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
            "tokenizer": tokenizer, "image_encoder": image_encoder.eval(), "audio_encoder": audio_encoder.eval(),
            "scheduler": default_scheduler()}
