"""Started with `transformers serve` by tests/serving/server.py only: lets transformers 5.24 read a data-URL video.

The OpenAI ``video_url`` extension carries a clip as a ``data:video/...;base64,`` URL (vLLM and SGLang read it);
transformers 5.24's ``load_video`` reads http(s) URLs, YouTube and local paths, and raises ``TypeError`` for any
other string. This adds the data-URL case, decoded from memory by the same decoder an http(s) URL goes through;
every other input goes to transformers' own function unchanged.
"""

import base64
import io


def _read_data_urls() -> None:
    import transformers.video_processing_utils as video_processing
    import transformers.video_utils as video_utils

    load_video = video_utils.load_video

    def load_video_or_data_url(video, num_frames=None, fps=None, backend="pyav", sample_indices_fn=None, **kwargs):
        if not (isinstance(video, str) and video.startswith("data:")):
            return load_video(video, num_frames, fps, backend, sample_indices_fn, **kwargs)
        header, _, payload = video.partition(",")
        if not header.endswith(";base64"):
            raise ValueError(f"a data-URL video must be base64-encoded, got the header {header[:60]!r}")
        if sample_indices_fn is None:

            def sample_indices_fn(metadata, **fn_kwargs):
                return video_utils.default_sample_indices_fn(metadata, num_frames=num_frames, fps=fps, **fn_kwargs)

        decoder = video_utils.VIDEO_DECODERS[backend]
        return decoder(io.BytesIO(base64.b64decode(payload)), sample_indices_fn, **kwargs)

    video_utils.load_video = load_video_or_data_url
    video_processing.load_video = load_video_or_data_url  # it imported the name at import time


_read_data_urls()
