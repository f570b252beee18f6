"""Data preparation and two-stage training on tiny synthetic clips (CPU)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from anytalker.training.examples import choose_batch, pair_example, single_example
from anytalker.training.prepare import PrepareSettings, prepare_dataset
from anytalker.training.shards import ShardIndex
from anytalker.training.trainer import Trainer
from anytalker.video.io import write_video

FPS, RATE = 24, 16000


def make_clip(folder: Path, name: str, persons: int = 1, seconds: float = 1.2, seed: int = 0, side: int = 48,
              silent: bool = False, boxes: bool = True):
    """A flat scene with one square 'face' per person whose dark mouth opens with its own track."""
    rng = np.random.default_rng(seed)
    frames_n, t = int(seconds * FPS), np.arange(int(seconds * RATE)) / RATE
    tracks = []
    for p in range(persons):
        envelope = (np.sin(2 * np.pi * (1.5 + p) * t + rng.uniform(0, 6)) > 0.2).astype(np.float32)
        tracks.append(np.zeros_like(t, np.float32) if silent else (0.3 * envelope * np.sin(2 * np.pi * (180 + 60 * p) * t)).astype(np.float32))
    frames = np.empty((frames_n, side, side * persons, 3), np.uint8)
    frames[:] = rng.integers(40, 200, 3)
    face_boxes = []
    for p in range(persons):
        cx, cy, r = side * p + side // 2, side // 2, side // 4
        face_boxes.append([cx - r, cy - r, cx + r, cy + r])
        for i in range(frames_n):
            frames[i, cy - r:cy + r, cx - r:cx + r] = (200, 160, 120)
            level = np.abs(tracks[p][int(i / FPS * RATE):int((i + 1) / FPS * RATE)]).mean()
            frames[i, cy + 2:cy + 3 + int(6 * level / 0.3), cx - 4:cx + 4] = (60, 0, 0)
    folder.mkdir(parents=True, exist_ok=True)
    sidecar = {"caption": "a person talking"}
    if boxes:
        sidecar["boxes"] = face_boxes
    if persons == 1:
        write_video(folder / f"{name}.mp4", frames, FPS, audio=tracks[0], sample_rate=RATE)
    else:
        write_video(folder / f"{name}.mp4", frames, FPS, audio=sum(tracks), sample_rate=RATE)
        sidecar["audio"] = []
        for p, track in enumerate(tracks):
            sf.write(folder / f"{name}.{p}.wav", track, RATE)
            sidecar["audio"].append(f"{name}.{p}.wav")
    (folder / f"{name}.json").write_text(json.dumps(sidecar))


SETTINGS = PrepareSettings(frames=9, height=32, width=64)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Stage-1 (single-person, encodings cached) and stage-2 (two-person) shards."""
    from anytalker.pipeline.tiny import random_tiny_components
    from anytalker.training.examples import ConditionEncoder

    root = tmp_path_factory.mktemp("data")
    for i in range(4):
        make_clip(root / "single", f"s{i}", seed=i)
    for i in range(2):
        make_clip(root / "multi", f"m{i}", persons=2, seed=10 + i)
    parts = random_tiny_components()
    encoder = ConditionEncoder(parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["image_encoder"],
                               parts["audio_encoder"], text_len=parts["transformer"].config.text_len)
    prepare_dataset(root / "single", root / "stage1", SETTINGS, shard_size=3, encode=encoder.cache_entries,
                    progress=False)
    prepare_dataset(root / "multi", root / "stage2", SETTINGS, progress=False)
    return root


def test_prepare_writes_samples_with_views_audio_and_cache(datasets):
    index = ShardIndex.from_dir(datasets / "stage1")
    assert len(index.shards) == 4 and len(index) == 4 * 3  # 1.2 s = 28 frames -> 3 samples of 9 per clip
    sample = index.read(0)
    assert sample.frames.shape == (9, 32, 64, 3) and sample.half_frames.shape == (9, 32, 32, 3)
    assert len(sample.audio) == 1 and sample.audio[0].shape == (9 * RATE // FPS,)
    assert sample.cache["latents"].shape == (16, 3, 4, 8) and sample.cache["half.latents"].shape == (16, 3, 4, 4)
    assert sample.cache["audio.0"].shape[0] == 9
    box = sample.meta["persons"][0]["box"]
    assert box[2] - box[0] > 0 and box[3] <= 32 and isinstance(sample.meta["persons"][0]["speaking"], list)
    two = ShardIndex.from_dir(datasets / "stage2").read(0)
    assert len(two.audio) == 2 and two.half_frames is None and len(two.meta["persons"]) == 2
    assert two.meta["persons"][0]["box"][0] < two.meta["persons"][1]["box"][0]  # left to right


def test_prepare_filters_with_reasons_skips_corrupt_and_resumes(tmp_path):
    src = tmp_path / "clips"
    make_clip(src, "good", seed=1)
    make_clip(src, "short", seconds=0.2)
    make_clip(src, "silent", silent=True)
    make_clip(src, "nofaces", boxes=False)  # flat colour squares: no detector finds a face
    make_clip(src, "wrongcount", persons=2)
    sidecar = json.loads((src / "wrongcount.json").read_text())
    (src / "wrongcount.json").write_text(json.dumps({**sidecar, "boxes": sidecar["boxes"][:1]}))
    (src / "corrupt.mp4").write_bytes(b"not a video at all")
    # What a killed atomic write leaves (utils.atomic's hidden temporary names): never read
    (src / ".good.1a2b3c4d.tmp.mp4").write_bytes((src / "good.mp4").read_bytes()[:1000])
    (src / ".clips.partial-x").mkdir()
    (src / ".clips.partial-x" / "clip.mp4").write_bytes((src / "good.mp4").read_bytes())
    summary = prepare_dataset(src, tmp_path / "out", SETTINGS, progress=False)
    log = {e["clip"]: e for e in map(json.loads, (tmp_path / "out" / "clips.jsonl").read_text().splitlines())}
    assert log["good"]["status"] == "ok"
    assert log["short"]["reason"].startswith("too short")
    assert log["silent"]["reason"] == "silent audio"
    assert log["nofaces"]["reason"].startswith("face count wrong")
    assert log["wrongcount"]["reason"].startswith("face count wrong")
    assert log["corrupt"]["status"] == "corrupt"
    assert summary["ok"] == 1 and summary["clips"] == 6 and summary["rejected"]["face count wrong"] == 2

    make_clip(src, "later", seed=5)
    again = prepare_dataset(src, tmp_path / "out", SETTINGS, progress=False)
    assert again["clips"] == 7 and again["shards"] == 2  # only the new clip was processed
    assert len(ShardIndex.from_dir(tmp_path / "out")) == 2 * 3


def test_side_by_side_pair_layout(datasets):
    index = ShardIndex.from_dir(datasets / "stage1")
    left, right = index.read(0), index.read(4)
    pair = pair_example(left, right)
    assert pair.frames.shape == (9, 32, 64, 3)
    assert np.array_equal(pair.frames[:, :, :32], left.half_frames)
    assert np.array_equal(pair.frames[:, :, 32:], right.half_frames)
    assert [len(a) for a in pair.audio] == [9 * RATE // FPS] * 2 and pair.audio[1] is right.audio[0]
    assert pair.boxes[0][2] <= 32 <= pair.boxes[1][0]  # each face in its own half
    assert torch.equal(pair.cache["latents"][..., :4], left.cache["half.latents"])
    assert torch.equal(pair.cache["audio.1"], right.cache["audio.0"])
    half = single_example(left, view="half")  # a single clip in the geometry of one pair half
    assert half.frames.shape == (9, 32, 32, 3) and half.boxes == [left.meta["half_box"]]
    assert torch.equal(half.cache["latents"], left.cache["half.latents"]) and "clip_image" not in half.cache

    from anytalker.pipeline.tiny import random_tiny_components
    from anytalker.training.examples import ConditionEncoder

    parts = random_tiny_components()
    encoder = ConditionEncoder(parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["image_encoder"],
                               parts["audio_encoder"], text_len=32)
    encoded = encoder.encode(pair)
    masks = encoded["token_masks"]  # [2, 2, 4]: identity 0 on the left half, identity 1 on the right
    assert masks.shape == (2, 2, 4) and masks[0, :, 2:].sum() == 0 and masks[1, :, :2].sum() == 0
    assert encoded["audio"].shape[:2] == (2, 9) and encoded["y"].shape == (20, 3, 4, 8)


def test_batch_choice_is_a_function_of_seed_and_step():
    singles = list(range(10))
    kinds = [choose_batch(singles, list(range(8)), step, 2, 0.5, seed=3)[0] for step in range(200)]
    assert 0.35 < kinds.count("pairs") / 200 < 0.65
    assert choose_batch(singles, list(range(8)), 7, 2, 0.5, 3) == choose_batch(singles, list(range(8)), 7, 2, 0.5, 3)
    assert all(kind == "singles" for kind, _ in (choose_batch(singles, [], s, 2, 0.5, 3) for s in range(20)))
    kind, chosen = choose_batch([5, 6, 7], [0, 1], 0, 4, 0.0, 3)
    assert kind == "singles" and set(chosen) <= {5, 6, 7}


def _config(shards, out, steps, **train):
    return {"model": {"source": "random-tiny"}, "data": {"shards": str(shards), "stage": 1},
            "train": {"batch_size": 2, "max_steps": steps, "learning_rate": 2e-3, **train},
            "output": {"dir": str(out), "checkpoint_every": 2}}


def _weights(folder):
    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_loss_decreases_and_stage2_starts_from_stage1(datasets, tmp_path):
    stage1 = Trainer(_config(datasets / "stage1", tmp_path / "s1", 24), progress=False)
    stage1.train()
    losses = [float(row["loss"]) for row in csv.DictReader(open(tmp_path / "s1" / "log.csv"))]
    assert len(losses) == 24 and np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6])
    kinds = {row["kind"] for row in csv.DictReader(open(tmp_path / "s1" / "log.csv"))}
    assert kinds == {"pairs", "singles"}

    config = _config(datasets / "stage2", tmp_path / "s2", 2)
    config["data"]["stage"] = 2
    config["model"]["transformer"] = str(tmp_path / "s1" / "transformer")
    stage2 = Trainer(config, progress=False)
    start = stage2.accelerator.unwrap_model(stage2.transformer).state_dict()
    for name, value in _weights(tmp_path / "s1").items():
        assert torch.equal(start[name], value), name
    stage2.train()
    assert {row["kind"] for row in csv.DictReader(open(tmp_path / "s2" / "log.csv"))} == {"singles"}
    assert any(not torch.equal(v, _weights(tmp_path / "s1")[k]) for k, v in _weights(tmp_path / "s2").items())


def test_stage2_draws_pair_batches_from_pair_shards_and_single_batches_from_its_own(datasets, tmp_path):
    config = _config(datasets / "stage2", tmp_path / "mixed", 2)
    config["data"].update(stage=2, pair_shards=str(datasets / "stage1"), concat_probability=0.5)
    trainer = Trainer(config, progress=False)
    own = len(ShardIndex.from_dir(datasets / "stage2"))
    assert trainer.singles == list(range(own))
    assert trainer.pairable == list(range(own, own + len(ShardIndex.from_dir(datasets / "stage1"))))
    kinds = {}
    for step in range(40):
        kind, chosen = choose_batch(trainer.singles, trainer.pairable, step, 2, 0.5, 0)
        kinds.setdefault(kind, step)
        persons = {len(trainer.index.read(i).audio) for i in chosen}
        assert persons == ({1} if kind == "pairs" else {2}), (kind, persons)
    assert set(kinds) == {"pairs", "singles"}
    kind, batch, _ = trainer.batch(kinds["pairs"])  # pairs of the other folder's clips encode as in stage 1
    assert kind == "pairs" and batch["audio"].shape[1] == 2
    plain = _config(datasets / "stage2", tmp_path / "plain", 2)
    plain["data"]["stage"] = 2
    assert Trainer(plain, progress=False).pairable == []


def test_pair_shards_outside_stage2_and_bad_concat_probability_are_refused(datasets):
    from anytalker.training.config import load_config

    with pytest.raises(ValueError, match="pair_shards is for stage 2"):
        load_config({"data": {"stage": 1, "pair_shards": str(datasets / "stage1")}})
    with pytest.raises(ValueError, match=r"concat_probability must be in \[0, 1\]"):
        load_config({"data": {"concat_probability": 1.5}})


def test_killed_and_resumed_run_equals_uninterrupted_run(datasets, tmp_path):
    Trainer(_config(datasets / "stage1", tmp_path / "full", 6, ema_decay=0.9), progress=False).train()
    interrupted = _config(datasets / "stage1", tmp_path / "resumed", 6, ema_decay=0.9)
    Trainer(interrupted, progress=False).train(stop_after=3)  # "killed" after step 3 (checkpoint at 2)
    assert not (tmp_path / "resumed" / "transformer").exists()
    trainer = Trainer(interrupted, progress=False)
    trainer.train(resume=True)
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    ema_full = load_file(str(tmp_path / "full" / "transformer_ema" / "diffusion_pytorch_model.safetensors"))
    ema_resumed = load_file(str(tmp_path / "resumed" / "transformer_ema" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(ema_full[k], ema_resumed[k]) for k in ema_full)


def test_two_processes_equal_one_process_with_the_same_global_batch(datasets, tmp_path):
    import yaml

    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(_config(datasets / "stage1", tmp_path / name, 3)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "anytalker.cli", "train", str(tmp_path / "one.yaml"), "--quiet"],
                   check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "anytalker.cli",
                    "train", str(tmp_path / "two.yaml"), "--quiet"], check=True, env=env, timeout=300)
    ranks = (tmp_path / "two" / "checkpoint-3").glob("random_states_*.pkl")
    assert len(list(ranks)) == 2  # both processes really took part (one RNG state each)
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-4
    losses = [[float(r["loss"]) for r in csv.DictReader(open(tmp_path / n / "log.csv"))] for n in ("one", "two")]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_shipped_configs_are_valid():
    from anytalker.training.config import load_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("train_*.yaml"))
    assert configs
    for path in configs:
        config = load_config(path)
        assert config.train.max_steps > 0 and config.data.stage in (1, 2)
    with pytest.raises(ValueError, match="unknown keys in config.train"):
        load_config({"train": {"learnign_rate": 1.0}})


@pytest.mark.parametrize("variant", ["fused", "separate"])
def test_init_from_wan_starts_as_the_plain_wan_model(variant):
    """New audio/face modules start as a no-op: the output ignores audio; Wan's weights are kept."""
    from anytalker.models import AnyTalkerTransformer
    from anytalker.models.official_checkpoint import to_official_state_dict
    from anytalker.training.initialization import init_from_wan, is_audio_face_parameter

    official = {"model_type": "a2v_af", "dim": 32, "num_heads": 2, "num_layers": 2, "ffn_dim": 64, "text_len": 8,
                "legacy_audio_cross_attn": variant == "separate"}
    from anytalker.models.official_checkpoint import config_from_official

    wan = AnyTalkerTransformer.from_config(config_from_official(official))
    wan_state = {k: v for k, v in to_official_state_dict(wan).items() if not is_audio_face_parameter(k)}
    model = init_from_wan(wan_state, official).eval()
    for name, value in wan.state_dict().items():
        if not is_audio_face_parameter(name):
            assert torch.equal(model.state_dict()[name], value), name
    gen = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, 36, 2, 4, 4, generator=gen), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 5, 4096, generator=gen),
                  encoder_hidden_states_image=torch.randn(1, 3, 1280, generator=gen),
                  face_embeds=torch.randn(1, 2, 3, 1280, generator=gen),
                  audio_embeds=torch.randn(1, 2, 5, 5, 12, 768, generator=gen),
                  face_token_masks=torch.ones(1, 2, 2, 2))
    with torch.no_grad():
        out = model(**inputs).sample
        silent = model(**{**inputs, "audio_embeds": torch.zeros_like(inputs["audio_embeds"])}).sample
    torch.testing.assert_close(out, silent, atol=0, rtol=0)
    with pytest.raises(Exception, match="not a Wan2.1 I2V DiT"):
        init_from_wan({**wan_state, "extra.weight": torch.zeros(1)}, official)


def test_trainable_modes_checkpointing_and_validation_clip(datasets, tmp_path):
    from anytalker.training.initialization import is_audio_face_parameter

    config = _config(datasets / "stage1", tmp_path / "audio", 2, trainable="audio", gradient_checkpointing=True)
    config["output"]["validate_every"] = 2
    config["output"]["validation_steps"] = 1
    trainer = Trainer(config, progress=False)
    before = {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.transformer).state_dict().items()}
    trainer.train()
    after = _weights(tmp_path / "audio")
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(is_audio_face_parameter(k) for k in changed)
    assert (tmp_path / "audio" / "validation" / "step-000002.mp4").stat().st_size > 0

    lora = Trainer(_config(datasets / "stage1", tmp_path / "lora", 2, trainable="lora"), progress=False)
    assert any("lora" in name for name, p in lora.transformer.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for name, p in lora.transformer.named_parameters() if "lora" not in name)
    lora.train()
    merged = _weights(tmp_path / "lora")
    assert not any("lora" in k for k in merged) and set(merged) == set(before)
    assert any(not torch.equal(merged[k], before[k]) for k in merged)


@pytest.mark.parametrize("trainable", ["lora", "audio"])
def test_saved_weights_equal_the_merged_model_and_its_ema_copy(datasets, tmp_path, trainable):
    """save_model writes the gathered state dict (accelerator.get_state_dict) without touching the model:
    bit-identical to the old route, fuse_lora + unload_lora / EMA copied into the model, on a copy."""
    import copy

    trainer = Trainer(_config(datasets / "stage1", tmp_path / trainable, 2, trainable=trainable, ema_decay=0.9),
                      progress=False)
    trainer.train()
    model = trainer.unwrapped_transformer()
    assert (trainable == "lora") == any("lora" in name for name in model.state_dict())  # the model is unchanged

    def old_route(ema):
        reference = copy.deepcopy(model)
        if ema:
            trainer.ema.copy_to([p for p in reference.parameters() if p.requires_grad])
        if trainable == "lora":
            reference.fuse_lora()
            reference.unload_lora()
        return reference.state_dict()

    for folder, ema in (("transformer", False), ("transformer_ema", True)):
        saved = load_file(str(tmp_path / trainable / folder / "diffusion_pytorch_model.safetensors"))
        expected = old_route(ema)
        assert set(saved) == set(expected) and not any("lora" in k for k in saved)
        assert all(torch.equal(saved[k], expected[k]) for k in saved), folder
        config = json.loads((tmp_path / trainable / folder / "config.json").read_text())
        assert config["_class_name"] == type(model).__name__
    plain, ema = (load_file(str(tmp_path / trainable / f / "diffusion_pytorch_model.safetensors"))
                  for f in ("transformer", "transformer_ema"))
    assert any(not torch.equal(plain[k], ema[k]) for k in plain)  # the EMA weights really differ


def test_two_processes_save_merged_lora_and_ema_weights_through_the_gathered_state_dict(datasets, tmp_path):
    """save_model under torchrun (2 CPU processes, DDP): every rank gathers, rank 0 writes; LoRA merged and
    EMA weights as with one process."""
    import yaml

    one = _config(datasets / "stage1", tmp_path / "one", 2, trainable="lora", ema_decay=0.9)
    Trainer(one, progress=False).train()
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(
        _config(datasets / "stage1", tmp_path / "two", 2, trainable="lora", ema_decay=0.9)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "anytalker.cli",
                    "train", str(tmp_path / "two.yaml"), "--quiet"], check=True, env=env, timeout=300)
    for folder in ("transformer", "transformer_ema"):
        a, b = (load_file(str(tmp_path / run / folder / "diffusion_pytorch_model.safetensors")) for run in ("one", "two"))
        assert set(a) == set(b) and not any("lora" in k for k in b)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4, folder


def test_temporal_loss_counts_frame_to_frame_error_changes_outside_the_faces_only():
    from types import SimpleNamespace

    from anytalker.training.loss import flow_matching_loss

    latents = torch.zeros(1, 2, 3, 4, 4)  # x0 = 0, so the target flow is the noise = x_t / sigma
    masks = torch.zeros(1, 2, 2, 2)
    masks[0, 0, 0, 0] = 1  # identity 0's face: the top-left token = latent pixels [0:2, 0:2]
    masks[0, 1, 1, 1] = 1  # identity 1's face: the bottom-right token
    batch = {"latents": latents, "y": torch.zeros(1, 1, 3, 4, 4), "text": None, "clip_image": None,
             "faces": None, "audio": None, "token_masks": masks}

    def loss_with(error, temporal_weight):
        def transformer(hidden_states, timestep, **_):
            sigma = timestep.view(-1, 1, 1, 1, 1) / 1000
            return SimpleNamespace(sample=hidden_states[:, :2] / sigma + error)
        generators = [torch.Generator().manual_seed(0)]
        return flow_matching_loss(transformer, batch, generators, 3.0, "none", temporal_weight).item()

    steady = torch.full((1, 2, 3, 4, 4), 0.5)  # the same error in every frame: no flicker
    assert loss_with(steady, 0.0) == pytest.approx(0.25, rel=1e-4)
    assert loss_with(steady, 10.0) == pytest.approx(0.25, rel=1e-4)
    in_faces = steady.clone()
    in_faces[:, :, 1, :2, :2] = -0.5  # the error flips in frame 1, inside the two faces only
    in_faces[:, :, 1, 2:, 2:] = -0.5
    assert loss_with(in_faces, 10.0) == pytest.approx(loss_with(in_faces, 0.0), rel=1e-4)
    background = steady.clone()
    background[:, :, 1, 0, 3] = -0.5  # ... in one background latent pixel: 2 changes of 1 per channel
    expected = 0.25 + 10.0 * 2 * 2 * 1.0 / (2 * 2 * 4 * 4)
    assert loss_with(background, 10.0) == pytest.approx(expected, rel=1e-4)


def test_negative_temporal_loss_weight_is_refused():
    from anytalker.training.config import load_config

    with pytest.raises(ValueError, match="temporal_loss_weight must be >= 0"):
        load_config({"train": {"temporal_loss_weight": -1.0}})
