"""The puppet world: procedural 2D talking heads to train and test a tiny AnyTalker on a CPU.

Every clip is made from (persons, seed) alone: looks (`appearance`), voices (`voice`), who says
what when (`script`), how everyone moves (`behaviour`), the pixels (`render`), and ground truth
for every frame. `measure` reads mouth opening and the 22 eye/brow landmarks back from pixels
(a generated video's included), which is how a model trained on these clips is checked.

    scene = make_scene(2, seed=7)          # in memory: frames, tracks, script, boxes, ground truth
    write_clip(scene, "out/clip")          # mp4 + wavs + reference.png + meta.json + npz
    agreement(measure_frames(scene.frames, scene.face_boxes), scene.ground_truth)

`anytalker puppets make OUT --clips N --persons 2 --seed S` writes sets of clips. The tiny model
trained on them, its recipe and its evaluation are `anytalker.puppets.model`; `anytalker demo`
runs `anytalker.puppets.demo`.

Names are imported on first use: the `anytalker puppets` commands (cli/puppets.py) load without
pulling in torch (which `anytalker.faces`, and so `dataset`, imports).
"""

from __future__ import annotations

from ..utils.lazy import lazy_exports

_EXPORTS = {
    "appearance": ("Appearance", "Background", "Pose", "describe", "sample_appearance", "sample_background"),
    "behaviour": ("MOUTH_LAG_FRAMES", "Motion", "animate", "frame_envelope"),
    "dataset": ("GROUND_TRUTH", "LANDMARK_INDICES", "Scene", "caption", "clip_name", "clip_seed", "load_clip",
                "make_scene", "write_clip"),
    "measure": ("Measurement", "agreement", "measure_clip", "measure_frames"),
    "script": ("Phrase", "Script", "write_script"),
    "voice": ("SAMPLE_RATE", "Voice", "espeak_available", "sample_voice"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
