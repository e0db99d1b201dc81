"""Pretraining a tiny model's vision tower: the stand-in for the CLIP/SigLIP pretraining a real base arrives with.

LLaVA-NeXT-Video-7B's vision tower already tells a roof from a lake before anyone fine-tunes it; a tiny model built
from a config has random weights, and with them even a probe on both frames' features names the change kind poorly
(docs/training.md). ``geollava-tiny-model --vision_pretrain_steps N`` gives the tiny tower what the real one brings:
N steps of training on single synthetic scenes, fresh ones drawn here (not the dataset's), to say what covers each
patch, as fractions of :data:`~dataset_builder.synthetic.render.PIXEL_CLASSES`. No pair, caption or change is ever
shown; the projector and the language model stay random, so the base still describes nothing.
"""

import logging
import time

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dataset_builder.synthetic.render import PIXEL_CLASSES, SEASONS, render_with_labels
from dataset_builder.synthetic.scenes import apply_random_changes, random_scene


logger = logging.getLogger(__name__)

#: Families whose vision tower is a CLIP/SigLIP encoder under ``model.model`` (attribute names of the towers).
TOWERS = {
    "llava-next-video": ("vision_tower",),
    "llava-onevision": ("vision_tower",),
    "video-llava": ("video_tower", "image_tower"),
}


def scene_images(n: int, size: int, render_size: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random single scenes as ``size`` px frames, with the label of every pixel of the full render.

    Each scene is a random scene after 0-3 random changes (so new buildings, construction sites and cleared land
    appear as often as in a dataset), in a random season, rendered at ``render_size`` (default ``2 * size``, as the
    quickstart renders 128 px images for 64 px frames) and shrunk as ``dataset_builder.frames`` shrinks frames.

    Returns:
        ``(frames, labels)``: uint8 ``(n, size, size, 3)`` and uint8 ``(n, render_size, render_size)``.
    """
    render_size = render_size or 2 * size
    rng = np.random.default_rng(seed)
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty((n, render_size, render_size), dtype=np.uint8)
    seasons = list(SEASONS)
    for i in range(n):
        scene = apply_random_changes(random_scene(rng), int(rng.integers(0, 4)), rng)
        image, labels[i] = render_with_labels(
            scene, render_size, render_size, rng, season=seasons[int(rng.integers(len(seasons)))]
        )
        frames[i] = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))
    return frames, labels


def patch_targets(labels: np.ndarray, grid: int) -> torch.Tensor:
    """Per-patch class fractions: ``(n, grid * grid, len(PIXEL_CLASSES))`` from ``(n, H, W)`` pixel labels."""
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels.astype(np.int64)), len(PIXEL_CLASSES))
    fractions = torch.nn.functional.adaptive_avg_pool2d(one_hot.permute(0, 3, 1, 2).float(), grid)
    return fractions.flatten(2).transpose(1, 2)


def _patch_features(tower, pixel_values: torch.Tensor, layer: int, drop_cls: bool) -> torch.Tensor:
    hidden = tower(pixel_values, output_hidden_states=True).hidden_states[layer]
    return hidden[:, 1:] if drop_cls else hidden


def _fit(tower, head, train_x, train_y, steps, batch_size, learning_rate, generator, layer, drop_cls) -> torch.Tensor:
    """Train tower + head on random batches of the training scenes (AdamW, one-cycle); returns the last loss."""
    params = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps, pct_start=0.1)
    tower.train()
    loss = torch.tensor(float("nan"))
    for _ in tqdm(range(steps), desc="vision pretraining", unit="step"):
        index = torch.randint(0, len(train_x), (batch_size,), generator=generator)
        logits = head(_patch_features(tower, train_x[index], layer, drop_cls))
        loss = -(train_y[index] * torch.log_softmax(logits, -1)).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return loss


def pretrain_vision_tower(
    model,
    processor,
    family: str,
    steps: int,
    images: int = 3000,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> dict:
    """Train ``model``'s vision tower in place to label patches of synthetic scenes (see the module docstring).

    The features trained are the ones the model feeds its projector: hidden states of ``vision_feature_layer``,
    without the CLS token under the ``"default"`` select strategy. A linear head, thrown away afterwards, maps each
    patch feature to class fractions; the loss is the cross-entropy against the true fractions.

    Args:
        model: A tiny model of a family in :data:`TOWERS`.
        processor: Its processor (its video processor normalises the frames as training will).
        family: The family name.
        steps: Optimiser steps.
        images: Scenes to draw (frames of the processor's crop size).
        batch_size: Scenes per step.
        learning_rate: Peak learning rate of a one-cycle schedule (AdamW).
        seed: Seed of the scenes and of the head.

    Returns:
        ``steps``, ``images``, ``classes``, ``loss`` and ``patch_accuracy`` (arg-max class of each patch, on the
        last 10 % of the scenes, held out from training) and ``seconds``.

    Raises:
        ValueError: If the family's vision tower is not supported.
    """
    if family not in TOWERS:
        raise ValueError(f"vision pretraining supports the families {sorted(TOWERS)}, not {family!r}")
    start = time.perf_counter()
    towers = [getattr(model.model, name) for name in TOWERS[family]]
    tower = towers[0]
    vision_config = tower.config
    size, patch = vision_config.image_size, vision_config.patch_size
    layer = model.config.vision_feature_layer
    if not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer {layer!r}: only a single layer is supported")
    drop_cls = model.config.vision_feature_select_strategy == "default"  # CLIP's CLS token is not fed onward

    frames, labels = scene_images(images, size, seed=seed)
    pixel_values = processor.video_processor(list(frames[:, None]), return_tensors="pt")["pixel_values_videos"][:, 0]
    targets = patch_targets(labels, size // patch)
    n_eval = max(1, images // 10)
    train_x, train_y = pixel_values[:-n_eval], targets[:-n_eval]

    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(vision_config.hidden_size, len(PIXEL_CLASSES))
    loss = _fit(tower, head, train_x, train_y, steps, batch_size, learning_rate, generator, layer, drop_cls)
    tower.eval()
    with torch.no_grad():
        logits = head(_patch_features(tower, pixel_values[-n_eval:], layer, drop_cls))
        accuracy = (logits.argmax(-1) == targets[-n_eval:].argmax(-1)).float().mean().item()
    for other in towers[1:]:  # Video-LLaVA: the image tower is the same encoder as the video tower
        other.load_state_dict(tower.state_dict())
    stats = {
        "steps": steps,
        "images": images,
        "classes": list(PIXEL_CLASSES),
        "loss": round(loss.item(), 4),
        "patch_accuracy": round(accuracy, 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
    logger.info("vision tower pretrained: %s", stats)
    return stats
