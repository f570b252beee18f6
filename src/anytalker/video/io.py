"""Read and write mp4 (H.264 + AAC) with PyAV; writes are atomic.

Audio layout everywhere: float32 [channels, samples] (a 1-D [samples] array is accepted as mono).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np

from ..utils.atomic import atomic_write

# Still-image files the readers accept (reference images, FID folders), lower case.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Sample rates AAC can carry (MPEG-4 sampling frequency index).
AAC_SAMPLE_RATES = frozenset({96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025,
                              8000, 7350})
_BT709 = 1  # AVCOL_PRI/TRC/SPC_BT709: HD players assume it; tagging it makes every player agree


class VideoData(NamedTuple):
    frames: np.ndarray  # uint8 [F, H, W, 3] RGB
    fps: float
    audio: np.ndarray | None  # float32 [channels, samples]
    sample_rate: int | None


def write_video(path: str | os.PathLike, frames: Iterable, fps: float | Fraction,
                audio: np.ndarray | None = None, sample_rate: int | None = None, *,
                crf: int = 18, preset: str = "medium", audio_bitrate: int = 192_000) -> Path:
    """Write frames (and audio) to an H.264 yuv420p + AAC mp4, atomically; returns the path.

    frames: uint8 [F, H, W, 3] RGB, or float in [-1, 1] (the VAE's range), as an array, a tensor or
        any iterable of [H, W, 3] frames (a generator keeps long videos out of memory).
        Odd sizes are padded by one edge-replicated row / column (yuv420p needs even sizes), so the
        file can be one pixel larger than the frames.
    audio: float32 waveform in [-1, 1], [samples] (mono) or [channels, samples] (1 or 2 channels),
        at `sample_rate` (one of AAC_SAMPLE_RATES). It is written whole, with its exact sample count
        (the mp4 edit list carries it; see read_video): it is NOT cut to the video's length. Audio
        longer than the video makes a file whose last frame stays on screen while the sound plays
        on; trimming or padding to the frames is the caller's decision.
    The file is written under a temporary name in the same folder and renamed at the end: a crash
    or an exception leaves no partial file at `path` (an existing file there stays intact).
    """
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    waveform = None
    if audio is not None:
        waveform = _planar_audio(audio)
        if sample_rate not in AAC_SAMPLE_RATES:
            raise ValueError(f"AAC cannot carry sample rate {sample_rate}; "
                             f"resample to one of {sorted(AAC_SAMPLE_RATES)}")

    frame_iter = iter(frames)
    first = next(frame_iter, None)
    if first is None:
        raise ValueError("no frames to write")
    first = _uint8_frame(first)
    height, width = first.shape[:2]

    # The movie timescale (edit lists, durations) defaults to 1/1000 s, which rounds the audio's
    # length to whole milliseconds; a multiple of the sample rate and the frame rate keeps both exact.
    timescale = math.lcm(rate.numerator, sample_rate or 1000)
    if timescale >= 2**31:
        timescale = sample_rate or rate.numerator
    options = {"movflags": "+faststart", "movie_timescale": str(timescale)}

    path = Path(path)
    with atomic_write(path) as tmp, av.open(str(tmp), "w", format="mp4", options=options) as container:
        video = container.add_stream("libx264", rate=rate)
        video.width, video.height = width + width % 2, height + height % 2
        video.pix_fmt = "yuv420p"
        video.options = {"crf": str(crf), "preset": preset}
        context = video.codec_context
        context.color_primaries = context.color_trc = context.colorspace = _BT709
        context.color_range = 1  # limited ("tv") range, what yuv420p H.264 players expect

        audio_stream = None
        if waveform is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate)
            audio_stream.layout = "mono" if waveform.shape[0] == 1 else "stereo"
            audio_stream.bit_rate = audio_bitrate

        written = 0  # audio samples sent so far; audio is interleaved with the frames it belongs to
        for index, frame in enumerate(_chain(first, frame_iter)):
            frame = _uint8_frame(frame)
            if frame.shape != first.shape:
                raise ValueError(f"frame {index} has shape {list(frame.shape)}, frame 0 {list(first.shape)}")
            if height % 2 or width % 2:
                frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="ITU709")
            picture.colorspace, picture.color_range = _BT709, 1
            container.mux(video.encode(picture))
            if audio_stream is not None:
                until = min(waveform.shape[1], math.ceil((index + 1) / rate * sample_rate))
                written = _encode_audio(container, audio_stream, waveform, written, until, sample_rate)
        container.mux(video.encode())
        if audio_stream is not None:
            _encode_audio(container, audio_stream, waveform, written, waveform.shape[1], sample_rate)
            container.mux(audio_stream.encode())
    return path


def read_video(path: str | os.PathLike) -> VideoData:
    """(frames uint8 [F, H, W, 3] RGB, fps, audio float32 [channels, samples] or None, sample rate or None).

    The AAC encoder's leading priming samples are dropped by the decoder (mp4 edit list), and the
    trailing padding of the last AAC frame is cut here to the stream's stored duration, so a file
    written by write_video gives back exactly the samples it was given.
    """
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        video.thread_type = "AUTO"
        frames, chunks = [], []
        # Normalise any sample format (s16, packed, ...) to float planar [channels, samples].
        resampler = av.AudioResampler(format="fltp") if audio is not None else None
        for frame in container.decode(*[s for s in (video, audio) if s is not None]):
            if isinstance(frame, av.VideoFrame):
                frames.append(frame.to_ndarray(format="rgb24"))  # uses the stream's colour tags
            else:
                chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
        if not frames:
            raise ValueError(f"{path}: no video frames decoded")
        fps = float(video.average_rate or video.guessed_rate or video.base_rate)
        waveform = sample_rate = None
        if audio is not None:
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
            sample_rate = audio.codec_context.sample_rate
            waveform = (np.concatenate(chunks, axis=1) if chunks else np.zeros((audio.codec_context.channels, 0)))
            if audio.duration:
                waveform = waveform[:, :round(audio.duration * audio.time_base * sample_rate)]
            waveform = np.ascontiguousarray(waveform, dtype=np.float32)
    return VideoData(np.stack(frames), fps, waveform, sample_rate)


def probe_video(path: str | os.PathLike) -> dict:
    """Container and first video / audio stream facts, without decoding.

    {"format", "duration", "video": {"codec", "width", "height", "pix_fmt", "fps", "frames",
    "duration"} or None, "audio": {"codec", "sample_rate", "channels", "samples", "duration"} or None};
    durations in seconds.
    """
    with av.open(str(path)) as container:
        info = {"format": container.format.name,
                "duration": container.duration / av.time_base if container.duration is not None else None,
                "video": None, "audio": None}
        if container.streams.video:
            stream = container.streams.video[0]
            frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            info["video"] = {"codec": stream.codec_context.name, "width": stream.codec_context.width,
                             "height": stream.codec_context.height, "pix_fmt": stream.codec_context.pix_fmt,
                             "fps": float(stream.average_rate or stream.guessed_rate), "frames": frames,
                             "duration": _seconds(stream)}
        if container.streams.audio:
            stream = container.streams.audio[0]
            duration = _seconds(stream)
            rate = stream.codec_context.sample_rate
            info["audio"] = {"codec": stream.codec_context.name, "sample_rate": rate,
                             "channels": stream.codec_context.channels,
                             "samples": round(duration * rate) if duration is not None else None,
                             "duration": duration}
    return info


def _seconds(stream) -> float | None:
    return float(stream.duration * stream.time_base) if stream.duration is not None else None


def _chain(first, rest):
    yield first
    yield from rest


def _uint8_frame(frame) -> np.ndarray:
    """One [H, W, 3] frame as RGB uint8; floats are taken to be in [-1, 1]."""
    if hasattr(frame, "detach"):  # torch tensor; no torch import needed for numpy callers
        frame = frame.detach().cpu().float().numpy() if frame.is_floating_point() else frame.detach().cpu().numpy()
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected frames of shape [H, W, 3], got {list(frame.shape)}")
    if np.issubdtype(frame.dtype, np.floating):
        frame = np.clip(np.round((frame.astype(np.float32) + 1.0) * 127.5), 0, 255)
    elif frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 or float in [-1, 1], got {frame.dtype}")
    return np.ascontiguousarray(frame, dtype=np.uint8)


def _planar_audio(audio) -> np.ndarray:
    """[samples] or [channels, samples] -> float32 [channels, samples], 1 or 2 channels."""
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise ValueError(f"audio must be [samples] or [channels (1 or 2), samples], got shape {list(audio.shape)}")
    if audio.shape[1] == 0:
        raise ValueError("audio has no samples")
    return np.ascontiguousarray(audio)


def _encode_audio(container, stream, waveform: np.ndarray, start: int, stop: int, sample_rate: int) -> int:
    if stop > start:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(waveform[:, start:stop]), format="fltp",
                                           layout=stream.layout.name)
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
        container.mux(stream.encode(frame))  # PyAV re-chunks into the encoder's 1024-sample frames
    return max(start, stop)
