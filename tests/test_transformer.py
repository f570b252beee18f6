"""Behaviour of AnyTalkerTransformer that needs no golden files: any N, masks, errors, round trips."""

import pytest
import torch
from safetensors.torch import save_file

from anytalker.models import AnyTalkerTransformer
from anytalker.models.attention import build_dense_temporal_mask, temporal_audio_face_attention
from anytalker.models.official_checkpoint import to_official_state_dict
from anytalker.utils.checkpoints import CheckpointError

AUDIO = dict(audio_window=5, audio_layers=2, audio_channels=8)


def tiny_transformer(audio_attention="fused", num_layers=2, seed=0):
    torch.manual_seed(seed)
    model = AnyTalkerTransformer(
        num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=num_layers, text_dim=24, text_len=12,
        image_dim=20, face_dim=20, audio_hidden_dim=32, audio_tokens_per_frame=4, audio_token_dim=24,
        audio_attention=audio_attention, **AUDIO,
    )
    # Official init zeroes the head; random values make every output depend on every path.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def tiny_inputs(num_ids=2, frames=3, height=8, width=12, batch=1, seed=1):
    gen = torch.Generator().manual_seed(seed)
    audio_frames = 4 * (frames - 1) + 1
    masks = torch.zeros(batch, num_ids, frames, height // 2, width // 2)
    columns = torch.linspace(0, width // 2, num_ids + 1).long()
    for i in range(num_ids):  # side by side, left to right, with one soft column each
        masks[:, i, :, :, columns[i]:columns[i + 1]] = 1.0
        masks[:, i, :, :, columns[i]] = 0.5
    return dict(
        hidden_states=torch.randn(batch, 36, frames, height, width, generator=gen),
        timestep=torch.full((batch,), 700),
        encoder_hidden_states=torch.randn(batch, 7, 24, generator=gen),
        encoder_hidden_states_image=torch.randn(batch, 5, 20, generator=gen),
        face_embeds=torch.randn(batch, num_ids, 5, 20, generator=gen),
        audio_embeds=torch.randn(batch, num_ids, audio_frames, 5, 2, 8, generator=gen),
        face_token_masks=masks,
    )


def run(model, **inputs):
    with torch.no_grad():
        return model(**inputs).sample


@pytest.mark.parametrize("frames,num_ids", [(1, 1), (2, 3), (4, 2), (6, 8)])
def test_grouped_audio_attention_equals_dense_mask(frames, num_ids):
    torch.manual_seed(0)
    per_frame, heads, dim, face_len, tokens = 6, 2, 8, 5, 3
    audio_frames = 4 * (frames - 1) + 1
    query = torch.randn(2, frames * per_frame, heads, dim)
    face_k, face_v = torch.randn(2, 2, num_ids, face_len, heads, dim).unbind(0)
    audio_k, audio_v = torch.randn(2, 2, num_ids, audio_frames, tokens, heads, dim).unbind(0)
    grouped = temporal_audio_face_attention(query, face_k, face_v, audio_k, audio_v, frames)

    mask = torch.cat([torch.ones(frames * per_frame, face_len, dtype=torch.bool),
                      build_dense_temporal_mask(frames, per_frame, audio_frames, tokens)], dim=1)
    for i in range(num_ids):
        keys = torch.cat([face_k[:, i], audio_k[:, i].flatten(1, 2)], dim=1)
        values = torch.cat([face_v[:, i], audio_v[:, i].flatten(1, 2)], dim=1)
        dense = torch.nn.functional.scaled_dot_product_attention(
            query.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), attn_mask=mask).transpose(1, 2)
        torch.testing.assert_close(grouped[:, i], dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("audio_attention", ["fused", "separate"])
def test_any_number_of_identities_is_order_free(audio_attention):
    model = tiny_transformer(audio_attention)
    for num_ids in (1, 3, 8):
        inputs = tiny_inputs(num_ids=num_ids, width=32)
        out = run(model, **inputs)
        assert out.shape == (1, 16, 3, 8, 32) and torch.isfinite(out).all()
        order = torch.randperm(num_ids)
        shuffled = {**inputs, **{k: inputs[k][:, order] for k in ("face_embeds", "audio_embeds", "face_token_masks")}}
        torch.testing.assert_close(run(model, **shuffled), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("audio_attention", ["fused", "separate"])
def test_audio_acts_only_inside_its_face_region(audio_attention):
    model = tiny_transformer(audio_attention, num_layers=1)  # one block: no self-attention spread afterwards
    inputs = tiny_inputs(num_ids=2)
    base = run(model, **inputs)
    changed_audio = inputs["audio_embeds"].clone()
    changed_audio[:, 0] += 1.0
    changed = run(model, **{**inputs, "audio_embeds": changed_audio})
    moved = (changed - base).abs().amax(dim=1)  # [B, T, H, W]
    face0 = inputs["face_token_masks"][:, 0].repeat_interleave(2, -1).repeat_interleave(2, -2) > 0
    assert moved[face0].min() > 1e-4
    assert moved[~face0].max() < 1e-6
    # Without masks every identity's audio reaches every token.
    unmasked = run(model, **{**inputs, "face_token_masks": None, "audio_embeds": changed_audio})
    assert (unmasked - run(model, **{**inputs, "face_token_masks": None})).abs().amax(dim=1).min() > 1e-6


def test_latent_frame_sees_only_its_own_audio():
    model = tiny_transformer("fused", num_layers=1)
    inputs = tiny_inputs(num_ids=1, frames=3)
    base = run(model, **inputs)
    audio = inputs["audio_embeds"].clone()
    audio[:, :, 5:9] += 1.0  # video frames 5..8 belong to latent frame 2 (and to frame 0, which sees all)
    moved = (run(model, **{**inputs, "audio_embeds": audio}) - base).abs().amax(dim=(0, 1, 3, 4))
    assert moved[0] > 1e-4 and moved[2] > 1e-4 and moved[1] < 1e-6


@pytest.mark.parametrize("audio_attention", ["fused", "separate"])
def test_batch_equals_single_runs(audio_attention):
    model = tiny_transformer(audio_attention)
    inputs = tiny_inputs(batch=3)
    batched = run(model, **inputs)
    for b in range(3):
        single = run(model, **{k: v[b:b + 1] for k, v in inputs.items()})
        torch.testing.assert_close(batched[b:b + 1], single, atol=1e-5, rtol=1e-5)


def test_static_face_mask_broadcasts_over_frames():
    model = tiny_transformer()
    inputs = tiny_inputs()
    static = {**inputs, "face_token_masks": inputs["face_token_masks"][:, :, 0]}
    torch.testing.assert_close(run(model, **static), run(model, **inputs))


@pytest.mark.parametrize("audio_attention", ["fused", "separate"])
def test_use_face_masks_false_ignores_the_masks(audio_attention):
    """The no-face-mask ablation: with use_face_masks=False the masks change nothing, and the output
    equals the masked-off model's; with masks on, the same weights give a different output."""
    model = tiny_transformer(audio_attention)
    ablated = AnyTalkerTransformer.from_config(model.config, use_face_masks=False).eval()
    ablated.load_state_dict(model.state_dict())
    inputs = tiny_inputs()
    unmasked = run(model, **{**inputs, "face_token_masks": None})
    torch.testing.assert_close(run(ablated, **inputs), unmasked)
    assert (run(model, **inputs) - unmasked).abs().max() > 1e-3


@pytest.mark.parametrize("change,message", [
    (lambda i: {"face_embeds": i["face_embeds"][:, :1]}, "identity counts disagree"),
    (lambda i: {"face_token_masks": i["face_token_masks"][:, :1]}, "identity counts disagree"),
    (lambda i: {"audio_embeds": i["audio_embeds"][:, :, :8]}, r"4n\+1"),
    (lambda i: {"audio_embeds": i["audio_embeds"][:, :, :5]}, "audio length and video length disagree"),
    (lambda i: {"audio_embeds": i["audio_embeds"][..., :4]}, "windowed wav2vec2"),
    (lambda i: {"face_embeds": None}, "given together"),
    (lambda i: {"face_token_masks": i["face_token_masks"][..., :3]}, "token grid"),
    (lambda i: {"encoder_hidden_states": torch.zeros(1, 13, 24)}, "text_len=12"),
    (lambda i: {"hidden_states": i["hidden_states"][:, :16]}, "condition channels"),
    (lambda i: {"encoder_hidden_states_image": None}, "CLIP tokens"),
])
def test_bad_inputs_raise_named_errors(change, message):
    model = tiny_transformer()
    inputs = tiny_inputs()
    with pytest.raises(ValueError, match=message):
        model(**{**inputs, **change(inputs)})


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = tiny_transformer("separate")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = AnyTalkerTransformer.from_pretrained(tmp_path).eval()
    assert loaded.config.audio_attention == "separate"
    inputs = tiny_inputs()
    torch.testing.assert_close(run(loaded, **inputs), run(model, **inputs), atol=0, rtol=0)


def official_tiny_config():
    return {"model_type": "a2v_af", "dim": 32, "num_heads": 2, "num_layers": 1, "ffn_dim": 64, "text_len": 12,
            "in_dim": 36, "out_dim": 16, "freq_dim": 256, "eps": 1e-6, "legacy_audio_cross_attn": False}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_from_official_reads_release_files(tmp_path, suffix):
    from anytalker.models.official_checkpoint import config_from_official

    config = official_tiny_config()
    reference = AnyTalkerTransformer.from_config(config_from_official(config))
    state = {key: value.clone() for key, value in to_official_state_dict(reference).items()}
    assert "blocks.0.cross_attn.k_face.weight" in state and "audio_emb.proj1.weight" in state
    path = tmp_path / f"model{suffix}"
    if suffix == ".pth":
        torch.save({"model": state}, path)
    else:
        save_file(state, str(path))
    loaded = AnyTalkerTransformer.from_official(path, config)
    assert not any(p.is_meta for p in loaded.parameters())
    for name, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name

    half = AnyTalkerTransformer.from_official(path, config, torch_dtype=torch.bfloat16)
    assert half.proj_out.weight.dtype == torch.bfloat16
    assert half.blocks[0].scale_shift_table.dtype == torch.float32  # kept in fp32, as diffusers does


def test_from_official_reports_missing_unexpected_and_mismatched_keys(tmp_path):
    from anytalker.models.official_checkpoint import config_from_official

    config = official_tiny_config()
    state = to_official_state_dict(AnyTalkerTransformer.from_config(config_from_official(config)))
    del state["blocks.0.cross_attn.k_face.weight"]
    state["blocks.0.cross_attn.extra.weight"] = torch.zeros(1)
    state["head.head.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as error:
        AnyTalkerTransformer.from_official(state, config)
    text = str(error.value)
    assert "blocks.0.attn2.to_k_face.weight" in text and "blocks.0.cross_attn.extra.weight" in text
    assert "head.head.weight: file (3, 3)" in text

    missing = tmp_path / "AnyTalker" / "1_3B-single-v1.pth"
    with pytest.raises(CheckpointError, match=str(missing)):
        AnyTalkerTransformer.from_official(missing, config)
    with pytest.raises(CheckpointError, match="model_type"):
        AnyTalkerTransformer.from_official(state, {**config, "model_type": "t2v"})


def test_from_official_overlays_a_sharded_base_in_diffusers_naming(tmp_path):
    import json

    from anytalker.models.official_checkpoint import config_from_official

    config = official_tiny_config()
    reference = AnyTalkerTransformer.from_config(config_from_official(config))
    own = {k: v.clone().contiguous() for k, v in reference.state_dict().items()}
    audio_face = {k: v for k, v in to_official_state_dict(reference).items() if "face" in k or "audio" in k}
    base = {k: v for k, v in own.items() if "face" not in k and "audio" not in k}
    base["proj_out.bias"] = torch.full_like(base["proj_out.bias"], 7.0)  # overridden by the AnyTalker file below
    audio_face["head.head.bias"] = own["proj_out.bias"]
    names = sorted(base)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: base[k] for k in keys}, str(tmp_path / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    loaded = AnyTalkerTransformer.from_official(audio_face, config, base_checkpoint=tmp_path)
    for name, value in own.items():
        assert torch.equal(loaded.state_dict()[name], value), name
    with pytest.raises(CheckpointError, match="missing keys"):
        AnyTalkerTransformer.from_official(audio_face, config)
