"""Video files: H.264 + AAC mp4 read / write / probe with PyAV."""

from .io import AAC_SAMPLE_RATES, VideoData, probe_video, read_video, write_video

__all__ = ["AAC_SAMPLE_RATES", "VideoData", "probe_video", "read_video", "write_video"]
