"""GeoLLaVA Space: describe what changed between two satellite images of one place, or over 3 to 8 in time order.

    BASE_MODEL_ID=outputs/quickstart/base ADAPTER_ID=outputs/quickstart/adapter python spaces_demo/app.py

The base and the adapter come from ``space_config.json`` beside this file or the two variables; the model loads on
the CPU and moves to the GPU inside the ``@spaces.GPU`` function. It calls the same functions as ``geollava-predict``,
so both give the same text for the same images. See docs/space.md.
"""

import json
import logging
import os
import threading
from pathlib import Path

import av
import gradio as gr
from PIL import Image

from dataset_builder.frames import clip_ends
from dataset_builder.images import ImageTooLarge
from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.evaluation.predict import describe_pair, describe_sequence, read_image
from trainer.models.device import place, resolve_device, resolve_dtype
from trainer.models.families import frame_dates
from trainer.models.loading import adapter_folder, load_for_inference


try:  # ZeroGPU on Hugging Face Spaces; a pass-through everywhere else.
    import spaces

    gpu = spaces.GPU(duration=60)
except ImportError:  # pragma: no cover - `spaces` is in the requirements; keep the app runnable without it

    def gpu(fn):
        """Run ``fn`` as is (no ZeroGPU here)."""
        return fn


logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).parent / "examples"
#: Which base and adapter to serve, written beside the app by `geollava-push space` (model_cards.render's
#: SPACE_CONFIG_FILE; the app cannot import model_cards, a stage the Space does not ship).
CONFIG_FILE = Path(__file__).parent / "space_config.json"
#: Larger inputs are resized (with a note): the model sees a few hundred pixels anyway.
MAX_SIDE = int(os.environ.get("GEOLLAVA_MAX_SIDE", "2048"))
DEFAULT_MAX_NEW_TOKENS = int(os.environ.get("GEOLLAVA_MAX_NEW_TOKENS", "128"))
#: The most images of a time series (the ``sequences`` config's rows hold at most 8 by default).
MAX_SEQUENCE = 8

ABOUT = """
**What it is.** A video-LLM (LLaVA-NeXT-Video, Video-LLaVA, ...) fine-tuned with LoRA/QLoRA and magnitude pruning on
pairs of [fMoW](https://github.com/fMoW/dataset) satellite images of one place taken at least a year apart, following
GeoLLaVA (arXiv 2410.19552). It describes each image, then what changed between them.

**Good at.** Land-use changes that are visible at the model's input resolution: new or demolished buildings, new or
wider roads, cleared forest, construction sites, water extent.

**Not good at.** Small objects, counting, exact dates, anything outside the given frames, images that are not
nadir-ish satellite/aerial RGB, and images that are not registered (the same place). It can state changes that did not
happen: check what it says against the images.

**A time series.** Given 3 to 8 images in time order (and optionally their dates), it is asked as the dataset's
`sequences` rows are: what changed, and between which dates. A model trained on pairs only has not learnt that prompt.
"""

_MODEL = {}
_LOCK = threading.Lock()


def model_ids() -> tuple[str, str | None]:
    """The base model and the adapter to serve: ``BASE_MODEL_ID``/``ADAPTER_ID``, else :data:`CONFIG_FILE`.

    A base named by neither is the adapter's own ``base_model_name_or_path`` (its ``adapter_config.json``).

    Raises:
        RuntimeError: If no base model can be found, or the config file is not a JSON object.
    """
    settings = {}
    if CONFIG_FILE.is_file():
        try:
            settings = json.loads(CONFIG_FILE.read_text())
        except json.JSONDecodeError as err:
            raise RuntimeError(f"{CONFIG_FILE.name}: not valid JSON ({err})") from err
        if not isinstance(settings, dict):
            raise RuntimeError(f"{CONFIG_FILE.name}: expected a JSON object, got {type(settings).__name__}")
    adapter = os.environ.get("ADAPTER_ID") or settings.get("adapter") or None
    base = os.environ.get("BASE_MODEL_ID") or settings.get("base_model") or None
    if not base and adapter:
        config = adapter_folder(adapter) / "adapter_config.json"
        base = json.loads(config.read_text()).get("base_model_name_or_path") if config.is_file() else None
    if not base:
        raise RuntimeError(
            f"no base model: set BASE_MODEL_ID (a local path or a Hub id), or name it in {CONFIG_FILE.name} "
            "(`geollava-push space ... --base-model ORG/NAME`)"
        )
    return base, adapter


def get_model():
    """Load (once) the base model + adapter named by :func:`model_ids`."""
    with _LOCK:
        if not _MODEL:
            base, adapter = model_ids()
            # ZeroGPU: load on the CPU; the GPU exists only inside @spaces.GPU functions (on_device moves it there).
            model, processor, family = load_for_inference(
                base, adapter, dtype=os.environ.get("GEOLLAVA_DTYPE"), device="cpu"
            )
            _MODEL.update(model=model, processor=processor, family=family, base=base, adapter=adapter)
        return _MODEL


def on_device(loaded: dict) -> dict:
    """The loaded model moved to ``GEOLLAVA_DEVICE`` (``auto``) in its dtype (bf16 on CUDA); call it on the GPU."""
    device = resolve_device(os.environ.get("GEOLLAVA_DEVICE", "auto"))
    with _LOCK:
        place(loaded["model"], device, resolve_dtype(os.environ.get("GEOLLAVA_DTYPE"), device))
    return loaded


class InputError(ValueError):
    """A problem with what the user uploaded, shown to them as is."""


def _name(path) -> str:
    return Path(str(path)).name


def read_frame(path) -> Image.Image:
    """Read one uploaded image (JPEG, PNG or 3-band GeoTIFF), or say clearly why it cannot be used."""
    try:
        return read_image(path)
    except (ValueError, OSError) as err:
        raise InputError(f"Could not use '{_name(path)}': {err}") from err


def read_clip(path) -> list[Image.Image]:
    """The first and last frame of an uploaded clip (as the official GeoLLaVA reader takes them)."""
    try:
        frames, n = clip_ends(path)  # only two frames kept; the pixel and byte limits of dataset_builder.images
    except ImageTooLarge as err:
        raise InputError(f"Could not use '{_name(path)}': {err}") from err
    except (av.error.FFmpegError, IndexError, ValueError, OSError) as err:
        raise InputError(f"Could not read '{_name(path)}' as a video clip: {err}") from err
    if n < 2:
        raise InputError(f"The clip '{_name(path)}' has {n} frame(s); it needs at least 2 (before and after).")
    return frames


def limit_size(image: Image.Image, label: str) -> tuple[Image.Image, str | None]:
    """Resize an image whose longer side exceeds :data:`MAX_SIDE`, and say so."""
    if max(image.size) <= MAX_SIDE:
        return image, None
    scale = MAX_SIDE / max(image.size)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    note = f"The {label} image was {image.width}×{image.height} px; it was resized to {new[0]}×{new[1]} px."
    return image.resize(new, Image.Resampling.LANCZOS), note


def gather_frames(before, after, clip) -> tuple[list[Image.Image], list[str]]:
    """The two frames to describe, from two images or one clip, with notes on what was adjusted."""
    if clip:
        frames = read_clip(clip)
    else:
        missing = [label for label, value in (("before", before), ("after", after)) if not value]
        if missing:
            raise InputError(
                f"Please upload the {' and the '.join(missing)} image (or one 2-frame clip under 'Use a clip')."
            )
        frames = [read_frame(before), read_frame(after)]
    notes = []
    for i, label in enumerate(("before", "after")):
        frames[i], note = limit_size(frames[i], label)
        if note:
            notes.append(note)
    return frames, notes


def parse_dates(text: str | None, n_images: int) -> list[str] | None:
    """The dates typed for a time series (commas, spaces or new lines between them), checked; ``None`` if none."""
    values = (text or "").replace(",", " ").split()
    if not values:
        return None
    try:
        return frame_dates(values, n_images)
    except ValueError as err:
        raise InputError(f"Dates: {err}.") from err


def gather_sequence(files, dates_text: str | None) -> tuple[list[Image.Image], list[str] | None, list[str]]:
    """The frames of a time series (2 to :data:`MAX_SEQUENCE` images in time order), their dates and notes."""
    files = [f for f in files or [] if f]
    if not 2 <= len(files) <= MAX_SEQUENCE:
        raise InputError(f"A time series needs 2 to {MAX_SEQUENCE} images in time order; got {len(files)}.")
    frames, notes = [], []
    for i, path in enumerate(files, 1):
        frame, note = limit_size(read_frame(path), f"#{i} ({_name(path)})")
        frames.append(frame)
        notes += [note] if note else []
    dates = parse_dates(dates_text, len(files))
    if dates and len(files) == 2:
        notes.append("Two images are described as a pair, without their dates (dates are used from 3 images on).")
        dates = None
    return frames, dates, notes


def model_view(frames: list[Image.Image], processor) -> Image.Image:
    """The frames side by side, in time order, at the size the model's processor feeds it."""
    side = None
    for attr in ("video_processor", "image_processor"):
        sub = getattr(processor, attr, None)
        crop = getattr(sub, "crop_size", None) or getattr(sub, "size", None)
        if isinstance(crop, dict):
            side = crop.get("height") or crop.get("shortest_edge")
        if side and side < 4096:
            break
    side = int(side) if side and side < 4096 else 336
    tiles = [frame.convert("RGB").resize((side, side), Image.Resampling.BICUBIC) for frame in frames]
    gap = max(2, side // 32)
    canvas = Image.new("RGB", (len(tiles) * (side + gap) - gap, side), "white")
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (i * (side + gap), 0))
    return canvas


@gpu
def _generate(frames, template_id: int, max_new_tokens: int) -> str:
    loaded = on_device(get_model())
    return describe_pair(
        loaded["model"],
        loaded["processor"],
        loaded["family"],
        frames[0],
        frames[1],
        template_id=template_id,
        max_new_tokens=max_new_tokens,
    )


@gpu
def _generate_sequence(frames, dates, max_new_tokens: int) -> str:
    loaded = on_device(get_model())
    return describe_sequence(
        loaded["model"], loaded["processor"], loaded["family"], frames, dates, max_new_tokens=max_new_tokens
    )


def describe(before, after, clip, template: str, max_new_tokens: float, sequence=None, dates: str | None = None):
    """The Space's one action: returns (description, the frames as the model saw them, status message).

    ``sequence`` (2 to 8 image files in time order, ``dates`` optional) replaces the pair inputs when given: 3 or
    more images are asked with the ``sequences`` prompt, 2 as a pair.
    """
    try:
        if sequence:
            frames, days, notes = gather_sequence(sequence, dates)
            if before or after or clip:
                notes.append("The time series was described; the before/after/clip inputs were not used.")
        else:
            (frames, notes), days = gather_frames(before, after, clip), None
        template_id = PROMPT_TEMPLATES.index(template) if template in PROMPT_TEMPLATES else 0
        if len(frames) > 2:
            text = _generate_sequence(frames, days, int(max_new_tokens))
        else:
            text = _generate(frames, template_id, int(max_new_tokens))
        view = model_view(frames, get_model()["processor"])
    except InputError as err:
        return "", None, f"⚠️ {err}"
    except Exception as err:  # the app must stay up: show the failure, keep serving
        logger.exception("description failed")
        return "", None, f"⚠️ Something went wrong while describing these images: {type(err).__name__}: {err}"
    status = "✅ Done." + "".join(f"\n\nℹ️ {note}" for note in notes)
    return text, view, status


def examples() -> list[list]:
    """Example pairs shipped with the Space (synthetic fMoW-style scenes)."""
    pairs = []
    for before in sorted(EXAMPLES_DIR.glob("*_before.jpg")):
        after = before.with_name(before.name.replace("_before", "_after"))
        if after.exists():
            pairs.append([str(before), str(after)])
    return pairs


def build_demo() -> gr.Blocks:
    """The Gradio app."""
    with gr.Blocks(title="GeoLLaVA: what changed here?") as demo:
        gr.Markdown(
            "# 🛰️ GeoLLaVA — what changed here?\nUpload two satellite images of one place, earlier first (or, under "
            "'A time series', 2 to 8 in time order)."
        )
        with gr.Row():
            # image_mode=None: Gradio hands over the uploaded file after reading its header, never decoding it
            before = gr.Image(
                type="filepath", label="Before (earlier)", elem_id="before", sources=["upload"], image_mode=None
            )
            after = gr.Image(
                type="filepath", label="After (later)", elem_id="after", sources=["upload"], image_mode=None
            )
        with gr.Accordion("Other inputs: a GeoTIFF, any file, or one 2-frame clip", open=False), gr.Row():
            before_file = gr.File(label="Before (JPEG, PNG or 3-band GeoTIFF)", elem_id="before_file")
            after_file = gr.File(label="After (JPEG, PNG or 3-band GeoTIFF)", elem_id="after_file")
            clip = gr.File(label="Use a clip (first and last frame)", elem_id="clip")
        with gr.Accordion(f"A time series: 2 to {MAX_SEQUENCE} images in time order, dates optional", open=False):
            sequence = gr.File(
                label=f"Images in time order, earliest first (2 to {MAX_SEQUENCE}; JPEG, PNG or 3-band GeoTIFF)",
                file_count="multiple",
                elem_id="sequence",
            )
            dates = gr.Textbox(
                label="Their dates, in the same order (optional)",
                placeholder="2016-03-02, 2017-08-15, 2019-01-30",
                elem_id="dates",
            )
        template = gr.Dropdown(
            choices=list(PROMPT_TEMPLATES),
            value=PROMPT_TEMPLATES[0],
            label="Prompt for a pair (the paper's 6 templates; 3 or more images get the sequences prompt)",
        )
        with gr.Accordion("Advanced settings", open=False):
            max_new_tokens = gr.Slider(8, 512, value=DEFAULT_MAX_NEW_TOKENS, step=8, label="Max new tokens")
        run = gr.Button("Describe the change", variant="primary", elem_id="run")
        status = gr.Markdown(elem_id="status")
        output = gr.Textbox(label="Description", lines=6, elem_id="output")
        view = gr.Image(label="The frames as the model saw them, in time order", elem_id="view", interactive=False)
        if examples():
            gr.Examples(examples(), inputs=[before, after], label="Examples (synthetic fMoW-style scenes)")
        gr.Markdown(ABOUT)

        # The time series inputs come last, with defaults: API callers that send the pair inputs only still work.
        def _run(b, a, bf, af, c, t, n, s=None, d=None):
            return describe(bf or b, af or a, c, t, n, s, d)

        run.click(
            _run,
            [before, after, before_file, after_file, clip, template, max_new_tokens, sequence, dates],
            [output, view, status],
            api_name="describe",
        )
    return demo


def main() -> None:
    """Start the app (``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` choose where)."""
    logging.basicConfig(level=logging.INFO)
    # Gradio opens each upload (header only, see build_demo) before read_frame checks it: with Pillow's own bomb
    # check off here, the pixel limit of dataset_builder.images is the one check, and its message the one shown.
    Image.MAX_IMAGE_PIXELS = None
    demo = build_demo()
    try:
        get_model()
    except Exception:  # noqa: BLE001 - still serve the page; each request reports the problem
        logger.exception("could not load the model at start-up")
    demo.queue(default_concurrency_limit=int(os.environ.get("GEOLLAVA_CONCURRENCY", "1")), max_size=32)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), show_error=True)


if __name__ == "__main__":
    main()
