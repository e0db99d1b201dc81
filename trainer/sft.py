"""``geollava-train``: supervised fine-tuning of a video VLM on change-captioning pairs, with LoRA/QLoRA and pruning.

    geollava-train --config trainer/recipes/tiny/lora.yaml --model_name_or_path outputs/tiny-llava-next-video \
        --dataset_name outputs/dataset --output_dir outputs/adapter

A YAML recipe and ``--field value`` overrides, parsed by ``TrlParser``; ``output_dir`` ends up holding the adapter
folder, never optimizer state. See docs/training.md.
"""

import logging
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import datasets
import torch
import transformers
from datasets import load_dataset
from transformers import set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import SFTTrainer, TrlParser

from trainer.evaluation.selection import selection_callback
from trainer.pruning.callback import PruningCallback
from trainer.pruning.masks import MASKS_FILE, SavedMasks
from trainer.pruning.methods import PruningConfig, calibration_batches
from trainer.training.callbacks import get_callbacks
from trainer.training.ccexpert_stages import CCExpertStageArguments, stage_trainer_kwargs
from trainer.training.collator import VideoSFTCollator
from trainer.training.config import GeoModelConfig, GeoScriptArguments, GeoSFTConfig
from trainer.training.model_setup import LoadedModel, load_model, load_processor, match_trainable_dtype, resolve_family
from trainer.training.run_summary import build_summary, plot_curves, write_summary
from trainer.training.throughput import ThroughputCallback


logger = logging.getLogger(__name__)

ROW_COLUMNS = ("id", "frames", "timestamps", "conversations")
# Files the trainer writes into output_dir that do not belong in an adapter folder: PEFT's placeholder card (the card
# renderer writes the real one) and the pickled training arguments (run_summary.json records them as JSON).
NOT_ADAPTER_FILES = ("README.md", "training_args.bin")


def parse_args(argv: list[str] | None = None):
    """Parse a recipe and overrides into the option dataclasses (script, SFT, model, pruning, CCExpert stage)."""
    parser = TrlParser((GeoScriptArguments, GeoSFTConfig, GeoModelConfig, PruningConfig, CCExpertStageArguments))
    return parser.parse_args_and_config(args=argv)


def recipe_path(argv: list[str] | None) -> str | None:
    """The ``--config`` path of the command line, if any."""
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def load_rows(script_args: GeoScriptArguments):
    """The training rows: ``load_dataset`` on a local folder or a Hub id (the same code), trimmed to what we use."""
    dataset = load_dataset(script_args.dataset_name, script_args.dataset_config, split=script_args.dataset_train_split)
    missing = [c for c in ("frames", "conversations") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset_name {script_args.dataset_name!r}: rows lack the column(s) {missing}")
    dataset = dataset.select_columns([c for c in ROW_COLUMNS if c in dataset.column_names])
    check_frame_counts(dataset, script_args)
    if script_args.shuffle_seed is not None:
        dataset = dataset.shuffle(seed=script_args.shuffle_seed)
    if script_args.max_samples is not None:
        dataset = dataset.select(range(min(script_args.max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(
            f"dataset_name {script_args.dataset_name!r}: split {script_args.dataset_train_split!r} is empty"
        )
    return dataset


def check_frame_counts(dataset, script_args: GeoScriptArguments) -> None:
    """Check the rows hold what ``num_frames`` says: 2 frames for pairs, at most ``num_frames`` for sequences.

    Raises:
        ValueError: Naming ``num_frames`` and the first row that does not fit.
    """
    if "timestamps" not in dataset.column_names:
        if script_args.num_frames != 2:
            raise ValueError(f"num_frames {script_args.num_frames}: the rows are pairs of 2 frames (no 'timestamps')")
        return
    ids = dataset["id"] if "id" in dataset.column_names else range(len(dataset))
    for row_id, timestamps in zip(ids, dataset["timestamps"], strict=True):
        if len(timestamps) > script_args.num_frames:
            raise ValueError(
                f"num_frames {script_args.num_frames}: row {row_id!r} holds {len(timestamps)} dated frames; "
                "raise num_frames to the dataset's max_frames"
            )


def resume_checkpoint(training_args) -> str | None:
    """The checkpoint folder training resumes from: ``resume_from_checkpoint``, ``true``/``last`` for the last one.

    Raises:
        ValueError: If ``true``/``last`` is asked and ``output_dir`` holds no checkpoint.
    """
    value = training_args.resume_from_checkpoint
    if isinstance(value, str) and value.lower() in ("true", "last"):
        out = training_args.output_dir
        last = get_last_checkpoint(out) if Path(out).is_dir() else None
        if last is None:
            raise ValueError(f"No valid checkpoint found in output directory ({training_args.output_dir})")
        return last
    return value


def given_masks(pruning_args: PruningConfig, loaded: LoadedModel, checkpoint: str | None) -> SavedMasks | None:
    """The masks the pruning callback starts from, each an explicit input; ``None``: the callback computes them.

    In order: the checkpoint training resumes from, once pruning had run (it then holds masks); the folder
    ``pruning_masks_path`` names; the pruned full-precision copy a quantized base was loaded from.

    Raises:
        FileNotFoundError: If ``pruning_masks_path`` holds no masks.
    """
    if not pruning_args.enabled:
        return None
    if checkpoint is not None and (Path(checkpoint) / MASKS_FILE).is_file():
        return SavedMasks.read(checkpoint)
    if pruning_args.pruning_masks_path is not None:
        folder = Path(pruning_args.pruning_masks_path)
        if not (folder / MASKS_FILE).is_file():
            raise FileNotFoundError(f"pruning_masks_path {str(folder)!r} holds no {MASKS_FILE}")
        return SavedMasks.read(folder)
    return loaded.pruned_masks


def finalize_output_dir(output_dir: str | Path, keep_checkpoints: bool) -> None:
    """Leave only adapter-folder files in ``output_dir``: drop the placeholder card, pickled args, checkpoints."""
    out = Path(output_dir)
    for name in NOT_ADAPTER_FILES:
        (out / name).unlink(missing_ok=True)
    if not keep_checkpoints:
        for checkpoint in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)


class CurrentStdoutHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is when a record is emitted, not to the one of its creation.

    A caller that captures one run's output (``contextlib.redirect_stdout``) then still sees the logs of the runs after
    it, instead of their going to the first run's closed or discarded buffer.
    """

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        """The current ``sys.stdout``."""
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass  # always the current sys.stdout


def setup(training_args, script_args, model_args, pruning_args) -> None:
    """Logging on every process (at the process's level), the seed, and the torch thread count."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[CurrentStdoutHandler()],
    )
    log_level = training_args.get_process_log_level()
    logging.getLogger("trainer").setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info("model options %s", model_args)
    logger.info("script options %s", script_args)
    logger.info("pruning options %s", pruning_args)
    set_seed(training_args.seed)
    if training_args.torch_num_threads is not None:
        torch.set_num_threads(training_args.torch_num_threads)


def load_training_model(model_args, training_args, pruning_args, train_dataset, collator) -> LoadedModel:
    """The model to train: the base (its pruned full-precision copy first when a quantized base is pruned)."""
    calibration = None
    if pruning_args.pruning_method == "wanda" and (model_args.load_in_4bit or model_args.load_in_8bit):
        calibration = calibration_batches(
            train_dataset,
            collator,
            pruning_args.pruning_calibration_batches,
            training_args.per_device_train_batch_size,
        )
    out = Path(training_args.output_dir)
    return load_model(
        model_args,
        pruning_config=pruning_args,
        pruned_dir=out.with_name(out.name + ".pruned-base"),
        calibration=calibration,
        activation_checkpointing=bool(training_args.activation_checkpointing),
        device=training_args.device,  # Wanda calibrates where training runs
    )


def build_trainer(
    args, loaded: LoadedModel, processor, collator, train_dataset, throughput, masks: SavedMasks | None = None
) -> SFTTrainer:
    """The ``SFTTrainer`` with the run's callbacks: pruning, throughput, CCExpert's stage and selection."""
    script_args, training_args, model_args, pruning_args, stage_args = args
    # CCExpert's stages choose what trains (and the vision tower's lr) and may select the best checkpoint on val.
    stage = stage_trainer_kwargs(stage_args, loaded.model, training_args)
    selection = selection_callback(stage_args, training_args, processor, loaded.family, script_args.dataset_name)
    trainer = SFTTrainer(
        model=loaded.model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        data_collator=collator,
        optimizers=stage.get("optimizers", (None, None)),
        callbacks=[
            *get_callbacks(pruning_args, loaded.family, model_args, train_dataset, collator, masks),
            throughput,
            *([selection] if selection else []),
        ],
    )
    if loaded.quantization is not None:
        # TRL casts the trainable parameters of a quantized model to bf16; keep them in the compute dtype.
        match_trainable_dtype(trainer.model, model_args.torch_dtype())
    return trainer


def model_facts(model_args, loaded: LoadedModel) -> dict:
    """The run summary's ``model`` section."""
    peft = model_args.use_peft
    return {
        "base_model": str(model_args.model_name_or_path),
        "loaded_from": loaded.base_path,
        "family": loaded.family.name,
        "quantization": loaded.quantization,
        "dtype": str(model_args.torch_dtype()).removeprefix("torch."),
        "use_peft": peft,
        "lora_r": model_args.lora_r if peft else None,
        "lora_alpha": model_args.lora_alpha if peft else None,
        "lora_dropout": model_args.lora_dropout if peft else None,
        "lora_target_modules": model_args.target_modules(loaded.family) if peft else None,
        "trainable_parameters": loaded.trainable_parameters,
        "total_parameters": loaded.total_parameters,
    }


def save_run(trainer, args, argv, loaded: LoadedModel, train_dataset, collator, result, throughput, timings) -> None:
    """Save the adapter on every process, then (main process) the run summary and the curves into ``output_dir``."""
    script_args, training_args, model_args, pruning_args, _ = args
    start = time.perf_counter()
    trainer.save_model(training_args.output_dir)
    checksums = trainable_checksums(trainer)
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return
    out = Path(training_args.output_dir)
    finalize_output_dir(out, training_args.keep_checkpoints)
    pruning = next((cb.saved for cb in trainer.callback_handler.callbacks if isinstance(cb, PruningCallback)), None)
    timings["save"] = round(time.perf_counter() - start, 3)
    summary = build_summary(
        recipe=recipe_path(argv),
        arguments={"script": asdict(script_args), "model": asdict(model_args), "pruning": asdict(pruning_args)},
        data={
            "dataset_name": script_args.dataset_name,
            "dataset_config": script_args.dataset_config,
            "split": script_args.dataset_train_split,
            "rows": len(train_dataset),
            "num_frames": script_args.num_frames,
            "max_samples": script_args.max_samples,
        },
        model=model_facts(model_args, loaded),
        training_args=training_args.to_dict(),
        log_history=trainer.state.log_history,
        train_metrics=result.metrics,
        throughput=throughput.totals,
        skipped_overlong={"count": collator.n_skipped, "ids": collator.skipped_ids},
        pruning=pruning.report if pruning is not None else None,
        timings=timings,
    )
    summary["distributed"] = {
        "device": str(training_args.device),
        "world_size": training_args.world_size,
        "trainable_checksums": checksums,
        "ranks_agree": len(set(checksums)) == 1,
    }
    write_summary(summary, out)
    if training_args.plot:
        plot_curves(trainer.state.log_history, out)
    logger.info("adapter, run summary and curves saved to %s", out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-train``; returns the exit status."""
    args = parse_args(argv)
    script_args, training_args, model_args, pruning_args, _ = args
    setup(training_args, script_args, model_args, pruning_args)
    timings: dict[str, float] = {}

    ################
    # Load the dataset
    ################
    start = time.perf_counter()
    train_dataset = load_rows(script_args)
    timings["load_data"] = round(time.perf_counter() - start, 3)
    logger.info("%d training rows from %s", len(train_dataset), script_args.dataset_name)

    ################
    # Processor, collator and model
    ################
    family = resolve_family(model_args)
    processor = load_processor(model_args, training_args.chat_template_path)
    collator = VideoSFTCollator(
        processor, family, on_overlong=model_args.on_overlong, max_length=training_args.max_length
    )
    start = time.perf_counter()
    loaded = load_training_model(model_args, training_args, pruning_args, train_dataset, collator)
    timings["load_model"] = round(time.perf_counter() - start, 3)

    ################
    # Train
    ################
    checkpoint = resume_checkpoint(training_args)
    masks = given_masks(pruning_args, loaded, checkpoint)
    throughput = ThroughputCallback()
    trainer = build_trainer(args, loaded, processor, collator, train_dataset, throughput, masks)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    timings["train"] = round(time.perf_counter() - start, 3)
    trainer.log_metrics("train", result.metrics)

    ################
    # Save the adapter, summary and plot
    ################
    save_run(trainer, args, argv, loaded, train_dataset, collator, result, throughput, timings)
    return 0


def trainable_checksums(trainer) -> list[float]:
    """A checksum of the trainable weights on every process (all equal when data-parallel replicas agree)."""
    total = torch.zeros(1, dtype=torch.float64, device=trainer.accelerator.device)
    for parameter in trainer.model.parameters():
        if parameter.requires_grad:
            total += parameter.detach().double().abs().sum()
    return [float(x) for x in trainer.accelerator.gather(total).cpu().tolist()]


if __name__ == "__main__":
    sys.exit(main())
