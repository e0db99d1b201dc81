"""Started with `transformers serve` by tests/serving/server.py only: lets transformers 5.24 read a data-URL video.

The OpenAI ``video_url`` extension carries a clip as a ``data:video/...;base64,`` URL (vLLM and SGLang read it);
transformers 5.24's ``load_video`` reads http(s) URLs, YouTube and local paths, and raises ``TypeError`` for any
other string. This adds the data-URL case, decoded from memory by the same decoder an http(s) URL goes through;
every other input goes to transformers' own function unchanged. With ``GEOLLAVA_SERVE_RECORD`` naming a folder, it
also saves every image and video the server decoded there, so a test can compare them with the dataset's frames.
"""

import base64
import io
import itertools
import os
import threading


#: Where the decoded images and videos go (``.npy``, uint8, ``(H, W, 3)`` or ``(T, H, W, 3)``); unset: nowhere.
RECORD_ENV = "GEOLLAVA_SERVE_RECORD"


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


def _record_decoded(folder: str) -> None:
    # What the processors get once the request's URLs are decoded (and a video's frames sampled): what the model sees.
    import numpy as np
    import transformers.image_processing_backends as image_backends
    import transformers.image_processing_base as image_processing
    import transformers.video_processing_utils as video_processing

    counter, lock = itertools.count(), threading.Lock()

    def save(kind: str, array, channels_first: bool = False) -> None:
        array = np.asarray(array.cpu() if hasattr(array, "cpu") else array)
        if channels_first:
            array = np.moveaxis(array, -3, -1)  # (..., C, H, W) -> (..., H, W, C)
        with lock:
            number = next(counter)
        np.save(os.path.join(folder, f"{number:05d}-{kind}.npy"), np.ascontiguousarray(array, dtype=np.uint8))

    load_image = image_processing.load_image

    def load_and_record_image(image, *args, **kwargs):
        loaded = load_image(image, *args, **kwargs)
        save("image", loaded.convert("RGB"))
        return loaded

    image_processing.load_image = load_and_record_image  # what the PIL processors' fetch_images calls for a URL
    load_tensor = image_backends.load_image_as_tensor

    def load_and_record_tensor(image, *args, **kwargs):
        loaded = load_tensor(image, *args, **kwargs)
        save("image", loaded, channels_first=True)  # (C, H, W) uint8, RGB
        return loaded

    image_backends.load_image_as_tensor = load_and_record_tensor  # and the torchvision processors'
    decode_and_sample = video_processing.BaseVideoProcessor._decode_and_sample_videos

    def decode_sample_and_record(self, videos, *args, **kwargs):
        decoded, metadata = decode_and_sample(self, videos, *args, **kwargs)
        for video in decoded:
            save("video", video, channels_first=True)  # (T, C, H, W), as the decoders return it
        return decoded, metadata

    video_processing.BaseVideoProcessor._decode_and_sample_videos = decode_sample_and_record


_read_data_urls()
if os.environ.get(RECORD_ENV):
    _record_decoded(os.environ[RECORD_ENV])
