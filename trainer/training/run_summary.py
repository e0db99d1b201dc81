"""The run summary (``run_summary.json``) and the loss/throughput plot (``training_curves.png``) of a training run.

The card renderer reads the summary; its top-level keys are fixed: ``recipe``, ``versions``, ``data``, ``model``,
``training``, ``pruning``, ``timings``, ``throughput``, ``skipped_overlong``, ``log_history``.
"""

import importlib.metadata
import logging
from pathlib import Path

from dataset_builder.atomic import atomic_path, write_json


logger = logging.getLogger(__name__)

SUMMARY_FILE = "run_summary.json"
CURVES_FILE = "training_curves.png"
PACKAGES = (
    "geollava",
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "bitsandbytes",
    "datasets",
    "huggingface_hub",
)
# Training arguments copied into the summary (the rest are defaults nobody reads on a card).
TRAINING_KEYS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "warmup_ratio",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "weight_decay",
    "optim",
    "bf16",
    "fp16",
    "activation_checkpointing",
    "max_length",
    "seed",
)


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a run depends on (``None`` when one is not installed)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def build_summary(
    *,
    recipe: str | None,
    arguments: dict,
    data: dict,
    model: dict,
    training_args: dict,
    log_history: list[dict],
    train_metrics: dict,
    throughput: dict,
    skipped_overlong: dict,
    pruning: dict | None,
    timings: dict,
) -> dict:
    """Assemble the run summary (a pure function: everything comes in as arguments).

    Args:
        recipe: Path of the YAML recipe (``--config``), if any.
        arguments: Every parsed option, by dataclass (``script``, ``model``, ``pruning``), secrets excluded.
        data: Dataset name, config, split and rows used.
        model: Base model, family, quantization, LoRA settings, parameter counts.
        training_args: The ``GeoSFTConfig`` as a dict.
        log_history: ``trainer.state.log_history``.
        train_metrics: What ``trainer.train()`` returned (``train_runtime``, ``train_loss``...).
        throughput: :attr:`trainer.training.throughput.ThroughputCallback.totals`.
        skipped_overlong: ``{"count": n, "ids": [...]}`` from the collator.
        pruning: The content of ``pruning.json`` when pruning ran, else ``None``.
        timings: Wall-clock seconds of the stages (``load_data``, ``load_model``, ``train``, ``save``).

    Returns:
        The JSON-serialisable summary.
    """
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return {
        "recipe": recipe,
        "arguments": arguments,
        "versions": versions(),
        "data": data,
        "model": model,
        "training": {key: training_args.get(key) for key in TRAINING_KEYS},
        "pruning": pruning,
        "timings": timings,
        "throughput": throughput,
        "skipped_overlong": skipped_overlong,
        "metrics": {
            **train_metrics,
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
        },
        "log_history": log_history,
    }


def write_summary(summary: dict, out_dir: str | Path) -> Path:
    """Write ``run_summary.json`` into ``out_dir`` atomically (temporary name, then rename)."""
    return write_json(Path(out_dir) / SUMMARY_FILE, summary, indent=2)


def plot_curves(log_history: list[dict], out_dir: str | Path) -> Path | None:
    """Plot loss and learning rate (left) and samples/s and tokens/s (right) against the step.

    Returns:
        The PNG path, or ``None`` when the history holds no loss.
    """
    points = [entry for entry in log_history if "loss" in entry and "step" in entry]
    if not points:
        logger.warning("no loss was logged; no training curves written")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [entry["step"] for entry in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    left.plot(steps, [entry["loss"] for entry in points], color="tab:blue", label="loss")
    left.set_xlabel("optimizer step")
    left.set_ylabel("training loss")
    left.set_title("Loss (answer tokens only)")
    if any("learning_rate" in entry for entry in points):
        lr_axis = left.twinx()
        lr_axis.plot(steps, [entry.get("learning_rate", float("nan")) for entry in points], color="tab:gray", lw=1)
        lr_axis.set_ylabel("learning rate", color="tab:gray")
    if any("samples_per_second" in entry for entry in points):
        right.plot(steps, [entry.get("samples_per_second", float("nan")) for entry in points], color="tab:green")
        right.set_ylabel("samples/s", color="tab:green")
        token_axis = right.twinx()
        token_axis.plot(steps, [entry.get("tokens_per_second", float("nan")) for entry in points], color="tab:orange")
        token_axis.set_ylabel("tokens/s", color="tab:orange")
    right.set_xlabel("optimizer step")
    right.set_title("Throughput")
    path = Path(out_dir) / CURVES_FILE
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
