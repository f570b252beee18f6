"""Caching encodings for `prepare`: `PuppetCache`, the `encode` of puppet clips (recipe step 4)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...utils.atomic import finished_files

FPS = 24


def _clip_id(src: Path, path: Path) -> str:
    """prepare_dataset's name of a clip (kept in step with it)."""
    return path.relative_to(src).with_suffix("").as_posix().replace("/", "_").replace(".", "_")


class PuppetCache:
    """`prepare_dataset`'s `encode` for puppet clips: what the trainer reads, computed once.

    Compared with `ConditionEncoder.cache_entries` (generic clips):
    - single-puppet samples get their half view only (stage 1 trains with single_view "half"), and
      the face crop for CLIP is taken from that half view, the geometry it is used in;
    - the wav2vec2 features are computed on each puppet's whole track and then cut to the sample's
      frames, as generation computes them (whole-track normalisation and context; a track that is
      silent for a whole sample is fine, where encoding the silent piece alone is an error).
    """

    def __init__(self, encoder, src: str | os.PathLike):
        self.encoder = encoder
        self.src = Path(src)
        self.clips = {_clip_id(self.src, path): path for path in finished_files(self.src, "*.mp4")}
        self._features: tuple[str, list] | None = None

    def _track_features(self, source: str):
        """[N, F, 5, layers, C] wav2vec2 windows of the clip's whole tracks (F: the clip's frames)."""
        if self._features is None or self._features[0] != source:
            from ...audio.io import SAMPLE_RATE, load_audio
            from ...pipeline.conditioning import audio_windows

            path = self.clips[source]
            sidecar = json.loads(path.with_suffix(".json").read_text())
            meta = json.loads((path.parent / "meta.json").read_text())
            tracks = [load_audio(path.parent / name, SAMPLE_RATE, allow_silent=True) for name in sidecar["audio"]]
            self._features = (source, audio_windows(self.encoder.audio, tracks, FPS, meta["frames"]))
        return self._features[1]

    def __call__(self, sample) -> dict:
        from ...pipeline.conditioning import pixels

        enc, meta = self.encoder, sample.meta
        frames = meta["frames"]
        start = meta["segment"] * frames
        cache = {"text": enc.text(meta.get("caption", ""))}
        for i, features in enumerate(self._track_features(meta["source"])):
            cache[f"audio.{i}"] = features[start:start + frames].float()
        if sample.half_frames is not None:
            half = pixels(sample.half_frames)
            cache["half.latents"], cache["half.ref_latents"] = enc.video_latents(half), enc.reference_latents(half)
            cache["clip_face.0"] = enc.clip_faces(half, [meta["half_box"]])[0]
        else:
            clip = pixels(sample.frames)
            cache["latents"], cache["ref_latents"] = enc.video_latents(clip), enc.reference_latents(clip)
            cache["clip_image"] = enc.clip_image(clip)
            for i, face in enumerate(enc.clip_faces(clip, [p["box"] for p in meta["persons"]])):
                cache[f"clip_face.{i}"] = face
        return cache
