"""Regional torch.compile of the repeated blocks: the compiled model equals eager (fp32, CPU, inductor)
and one compiled graph serves every block, step, guidance pass and window."""

import copy

import numpy as np
import pytest
import torch

from anytalker.acceleration.compile import CountingBackend, compile_blocks, unique_graphs
from anytalker.faces import FaceBox
from anytalker.pipeline import runner
from anytalker.pipeline.settings import ModelSettings, SamplingSettings, SpeedSettings
from anytalker.pipeline.tiny import random_tiny_components


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _inputs(transformer, seed, frames=2, passes=2):
    cfg = transformer.config
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(passes, cfg.in_channels, frames, 4, 6, generator=g),
        timestep=torch.full((passes,), 900.0 - 300 * seed),
        encoder_hidden_states=torch.randn(passes, 7, cfg.text_dim, generator=g),
        encoder_hidden_states_image=torch.randn(passes, 257, cfg.image_dim, generator=g),
        face_embeds=torch.randn(passes, 2, 257, cfg.face_dim, generator=g),
        audio_embeds=torch.randn(passes, 2, 4 * (frames - 1) + 1, cfg.audio_window, cfg.audio_layers,
                                 cfg.audio_channels, generator=g),
        face_token_masks=torch.rand(passes, 2, frames, 2, 3, generator=g))


def test_inductor_compiled_blocks_equal_eager():
    eager = random_tiny_components(0)["transformer"]
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled)  # inductor, the default
    with torch.no_grad():
        for seed in range(3):  # three "steps": new inputs and timesteps, same shapes
            x = _inputs(eager, seed)
            assert (compiled(**x).sample - eager(**x).sample).abs().max() < 1e-4  # measured 4.8e-7
    assert unique_graphs() == 1


def test_one_compile_across_steps_windows_and_passes():
    rng = np.random.default_rng(0)
    samples = int(round(13 / 24 * 16000))  # 13 frames: three windows of 9 with 5 carried
    inputs = runner.GenerationInputs(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8),
                                     [rng.standard_normal(samples).astype(np.float32) * 0.1 for _ in range(2)],
                                     [FaceBox(4, 4, 36, 36), FaceBox(52, 8, 84, 40)])
    sampling = SamplingSettings(size=(32, 48), steps=3, max_frames_per_window=9, motion_frames=5, seed=1,
                                guidance_scale=4.0, audio_guidance_scale=2.0)  # 3 passes per forward
    loaded = runner.load_pipeline(ModelSettings("random-tiny"), progress=False)
    eager = runner.generate(loaded, inputs, sampling)
    backend = CountingBackend()
    compile_blocks(loaded.pipe.transformer, backend=backend)
    result = runner.generate(loaded, inputs, sampling)
    assert len(result.info["windows"]) == 3
    assert backend.graphs == 1 and unique_graphs() == 1  # 3 windows x 3 steps x 2 blocks, one graph
    assert np.array_equal(result.frames, eager.frames)


def test_load_pipeline_compiles_the_repeated_blocks():
    loaded = runner.load_pipeline(ModelSettings("random-tiny", speed=SpeedSettings(compile=True)), progress=False)
    blocks = loaded.pipe.transformer.blocks
    assert all(getattr(block, "_compiled_call_impl", None) is not None for block in blocks)
    assert loaded.speed["compile"]["blocks"] == ["AnyTalkerTransformerBlock"]
