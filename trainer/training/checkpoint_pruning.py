"""Global magnitude pruning of a safetensors checkpoint, tensor by tensor: never the whole model in memory.

A 7B checkpoint is ~14 GB in bf16: loading it to prune (in fp32, 28 GB) is more than many single-GPU machines have.
Here the target weights are read one at a time straight from the shards, in the checkpoint's own dtype (their
magnitudes are compared in float32 chunks, exact for bf16/fp16): two passes find the exact global threshold
(:func:`trainer.training.magnitude.find_threshold`), then the shards are copied byte for byte and each target is
rewritten in place with its pruned weights zeroed, in the checkpoint's dtype. Peak memory is one weight plus the
bit-packed masks (1/16 of a bf16 checkpoint), whatever the model's size.

The safetensors layout is read directly (an 8-byte header length, a JSON header of dtype/shape/byte offsets, then
the raw tensors), so a tensor is read with one ``pread`` and written back with one ``pwrite`` at the same offsets.
The in-memory names of the targets map to the checkpoint's keys with transformers' own key conversion (the one
``save_pretrained`` applies), so legacy and current layouts both work.
"""

import ctypes
import ctypes.util
import json
import logging
import shutil
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from tqdm.auto import tqdm
from transformers.core_model_loading import revert_weight_conversion

from trainer.models.masks import MASKS_FILE, pack_mask
from trainer.training.magnitude import find_threshold, layer_mask, numels, sampled_threshold


logger = logging.getLogger(__name__)

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
#: Files a pruned copy takes from the base besides its weights: configs, tokenizer, processor, templates.
CHECKPOINT_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py")


def _libc_trim():
    # glibc keeps freed heap memory that later small allocations (the packed masks, the threshold candidates) pin in
    # place; with one weight after another freed around them, the resident size would grow with the model.
    # malloc_trim(0) gives the freed pages back to the system (a no-op elsewhere than glibc).
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return (lambda: trim(0)) if trim else (lambda: None)


release_freed_memory = _libc_trim()


class StreamingUnsupported(ValueError):
    """The checkpoint cannot be pruned tensor by tensor (no safetensors shards, or a target key is not found)."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in a safetensors file.

    Attributes:
        file: The shard.
        key: Its key in the shard.
        dtype: The safetensors dtype name (``BF16``, ``F32``...).
        shape: The tensor's shape.
        start: Absolute byte offset of its data in the file.
        end: Absolute byte offset of the end of its data.
    """

    file: Path
    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    def read(self) -> torch.Tensor:
        """The tensor, read from disk with one ``pread`` into a fresh buffer."""
        if self.dtype not in DTYPES:
            raise StreamingUnsupported(f"{self.file.name}: {self.key!r} is {self.dtype}, not a float dtype")
        buffer = torch.empty(self.end - self.start, dtype=torch.uint8)
        with open(self.file, "rb") as f:
            f.seek(self.start)
            n = f.readinto(memoryview(buffer.numpy()))
        if n != self.end - self.start:
            raise OSError(f"{self.file}: short read of {self.key!r} ({n} of {self.end - self.start} bytes)")
        return buffer.view(DTYPES[self.dtype]).reshape(self.shape)

    def write(self, folder: Path, tensor: torch.Tensor) -> None:
        """Write ``tensor`` (same dtype and shape) over this entry's bytes in the same-named shard of ``folder``."""
        data = tensor.contiguous().view(torch.uint8).reshape(-1).numpy()
        with open(folder / self.file.name, "r+b") as f:
            f.seek(self.start)
            f.write(memoryview(data))


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of one safetensors file, by key (its ``__metadata__`` left out)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    base = 8 + length
    entries = {}
    for key, info in header.items():
        if key != "__metadata__":
            start, end = info["data_offsets"]
            entries[key] = TensorEntry(path, key, info["dtype"], tuple(info["shape"]), base + start, base + end)
    return entries


def local_checkpoint(model_path: str | Path) -> Path:
    """The checkpoint's folder: ``model_path`` itself, or a snapshot of the Hub repo it names (weights included)."""
    path = Path(model_path)
    if path.is_dir():
        return path
    return Path(snapshot_download(str(model_path), allow_patterns=list(CHECKPOINT_FILES)))


def copy_side_files(source: Path, out: Path, *, weights: bool) -> None:
    """Copy the checkpoint's files (configs, tokenizer, processor, template) into ``out``; its shards too if asked.

    Files already in ``out`` (e.g. what ``save_pretrained`` just wrote) are kept.
    """
    for path in sorted(source.iterdir()):
        if not path.is_file() or (out / path.name).exists() or path.name == MASKS_FILE:
            continue
        is_weights = path.name.endswith(".safetensors") or path.name.endswith(".safetensors.index.json")
        if any(path.match(pattern) for pattern in CHECKPOINT_FILES) and (weights or not is_weights):
            shutil.copyfile(path, out / path.name)  # kernel-side copy (copy_file_range): no user-space buffer


def checkpoint_entries(folder: Path) -> dict[str, TensorEntry]:
    """Every tensor of the checkpoint's safetensors shards, by key.

    Raises:
        StreamingUnsupported: If the folder has no safetensors shard (e.g. only ``pytorch_model.bin``).
    """
    shards = sorted(p for p in folder.glob("*.safetensors") if p.name != MASKS_FILE)
    if not shards:
        raise StreamingUnsupported(f"{folder}: no *.safetensors shard to read tensor by tensor")
    entries: dict[str, TensorEntry] = {}
    for shard in shards:
        entries.update(read_header(shard))
    return entries


def target_entries(model: torch.nn.Module, targets: Mapping, entries: dict[str, TensorEntry]) -> dict:
    """Canonical target name -> its tensor in the checkpoint, through the key conversion ``save_pretrained`` uses.

    Args:
        model: The model built from the checkpoint's config (on the meta device: no weights needed).
        targets: Canonical name -> ``nn.Linear`` (from ``collect_targets`` on that model).
        entries: The checkpoint's tensors (:func:`checkpoint_entries`).

    Raises:
        StreamingUnsupported: If a target's weight is not in the checkpoint under either name, or its shape differs.
    """
    in_memory = {f"{name}.weight": layer.weight for name, layer in targets.items()}
    on_disk = {id(tensor): key for key, tensor in revert_weight_conversion(model, dict(in_memory)).items()}
    found = {}
    for name, layer in targets.items():
        keys = [on_disk.get(id(layer.weight)), f"{name}.weight"]
        key = next((k for k in keys if k in entries), None)
        if key is None:
            raise StreamingUnsupported(f"{name}: its weight is in no shard (tried {[k for k in keys if k]})")
        if entries[key].shape != tuple(layer.weight.shape):
            raise StreamingUnsupported(
                f"{key}: shape {entries[key].shape} in the checkpoint, {tuple(layer.weight.shape)} in the model"
            )
        found[name] = entries[key]
    return found


class CheckpointWeights(Mapping):
    """Canonical name -> the weight read from disk on access (one at a time); ``numels()`` reads nothing."""

    def __init__(self, entries: dict[str, TensorEntry]):
        """Wrap the targets' entries (:func:`target_entries`)."""
        self.entries = entries

    def __getitem__(self, name: str) -> torch.Tensor:
        release_freed_memory()  # the previous weight's buffers, before reading the next one
        return self.entries[name].read()

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def numels(self) -> dict[str, int]:
        """Elements of each weight, from the header."""
        return {name: int(torch.Size(e.shape).numel()) for name, e in self.entries.items()}


@dataclass
class PrunedCheckpoint:
    """What :func:`prune_checkpoint` wrote and found.

    Attributes:
        packed: Canonical name -> bit-packed mask (``trainer.models.masks.pack_mask``).
        shapes: Canonical name -> weight shape.
        pruned: Canonical name -> weights pruned in it.
        threshold: The global magnitude threshold.
        dtype: The checkpoint's dtype of the targets (``BF16``...).
    """

    packed: dict[str, torch.Tensor]
    shapes: dict[str, list[int]]
    pruned: dict[str, int]
    threshold: float
    dtype: str


def prune_checkpoint(
    source: Path,
    out: Path,
    entries: dict[str, TensorEntry],
    sparsity: float,
    *,
    sample_size: int,
    exact: bool,
    seed: int,
) -> PrunedCheckpoint:
    """Copy the checkpoint in ``source`` to ``out`` with its targets magnitude-pruned (global threshold), in place.

    Args:
        source: The checkpoint folder.
        out: An empty folder for the copy (the caller makes it atomic).
        entries: The targets' tensors (:func:`target_entries`), in module order.
        sparsity: Target fraction pruned, in (0, 1).
        sample_size: Weights sampled to bracket the threshold.
        exact: Find the exact global threshold (exactly ``round(s N)`` pruned); else the sample's estimate.
        seed: Seed of the sample.
    """
    weights = CheckpointWeights(entries)
    if exact:
        found = find_threshold(weights, sparsity, sample_size, seed)
        threshold, keep = found.value, found.keep_ties
    else:
        threshold, keep = sampled_threshold(weights, sparsity, sample_size, seed), {}
    copy_side_files(source, out, weights=True)
    packed, pruned = {}, {}
    # Reversed module order, as the tie plan keeps the surplus of ties in the last layers first.
    for name in tqdm(list(reversed(entries)), desc="pruning the checkpoint", unit="tensor"):
        weight = weights[name]
        mask = layer_mask(weight, threshold, keep.get(name, 0))
        weight.masked_fill_(~mask, 0)
        entries[name].write(out, weight)
        packed[name], pruned[name] = pack_mask(mask), int(mask.numel() - mask.count_nonzero())
        del weight, mask
    order = list(entries)
    dtypes = {e.dtype for e in entries.values()}
    sizes = numels(weights)
    logger.info(
        "pruned %d tensors (%d weights, dtype %s) of %s at threshold %g",
        len(order),
        sum(sizes.values()),
        dtypes,
        source,
        threshold,
    )
    return PrunedCheckpoint(
        packed={n: packed[n] for n in order},
        shapes={n: list(entries[n].shape) for n in order},
        pruned={n: pruned[n] for n in order},
        threshold=threshold,
        dtype="/".join(sorted(dtypes)),
    )
