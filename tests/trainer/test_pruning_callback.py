import json
import shutil

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
from trl import SFTConfig, SFTTrainer

from dataset_builder.prompts import PROMPT_TEMPLATES
from dataset_builder.rows import features
from tests.trainer.helpers import tiny_sft_args
from trainer.models.families import build_messages, get_family
from trainer.models.loading import bitsandbytes_config
from trainer.pruning.callback import PruningCallback
from trainer.pruning.masks import MASKS_FILE, SavedMasks, apply_masks, load_masks, mask_sparsity
from trainer.pruning.methods import PruningConfig, collect_targets
from trainer.pruning.pruned_copy import prune_before_quantization
from trainer.tiny.build import build_tiny_model
from trainer.training.callbacks import CALLBACKS, get_callbacks


FAMILY = "llava-next-video"
LNV = get_family(FAMILY)
CAPTIONS = [
    "A new building was built in the north-east.",
    "A road was widened in the south.",
    "The forest was cleared in the west.",
    "No change is visible between the two images.",
]
CORPUS = [*PROMPT_TEMPLATES, *CAPTIONS]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(FAMILY, tmp_path_factory.mktemp("tiny-lnv"), corpus=CORPUS)


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(0)
    rows = {"frames": [], "conversations": []}
    for i in range(8):
        rows["frames"].append([rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)])
        rows["conversations"].append(
            [
                {"from": "human", "value": PROMPT_TEMPLATES[i % len(PROMPT_TEMPLATES)] + "\n<video>"},
                {"from": "gpt", "value": CAPTIONS[i % len(CAPTIONS)]},
            ]
        )
    return Dataset.from_dict(rows, features=features(columns=("frames", "conversations")))


class Collator:
    """A minimal video collator: loss on the answer only (assistant mask), right padding."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, rows):
        convs = [
            build_messages(
                FAMILY,
                row["conversations"][0]["value"].replace("<video>", "").strip(),
                row["frames"],
                row["conversations"][1]["value"],
            )
            for row in rows
        ]
        enc = self.processor.apply_chat_template(
            convs,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
            processor_kwargs={"padding": True, "padding_side": "right"},
        )
        labels = enc["input_ids"].clone()
        labels[(enc.pop("assistant_masks") == 0) | (enc["attention_mask"] == 0)] = -100
        return {**enc, "labels": labels}


def _load(path, **kwargs):
    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, **kwargs)


def _args(out, **kwargs):
    # TRL's SFTConfig as the project's trainer sets it up for the video collator (no dataset preparation)
    defaults = {"max_steps": 4, "per_device_train_batch_size": 2, "save_steps": 2, "remove_unused_columns": False}
    defaults |= {"dataset_kwargs": {"skip_prepare_dataset": True}, "max_length": None, "bf16": False}
    defaults |= {"activation_checkpointing": False, "report_to": "none"}
    return tiny_sft_args(SFTConfig, out, **(defaults | kwargs))


def _lora():
    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LNV.lora_target_modules)


def _trainer(model, tiny_path, out, dataset, config, peft=True, masks=None, **kwargs):
    processor = AutoProcessor.from_pretrained(tiny_path)
    collator = Collator(processor)
    return SFTTrainer(
        model=model,
        args=_args(out, **kwargs),
        train_dataset=dataset,
        processing_class=processor,
        data_collator=collator,
        peft_config=_lora() if peft else None,
        callbacks=get_callbacks(config, LNV, train_dataset=dataset, collator=collator, masks=masks),
    )


def _pruning(trainer) -> PruningCallback:
    (callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, PruningCallback)]
    return callback


def _losses(trainer):
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def _inputs(tiny_path, dataset):
    return Collator(AutoProcessor.from_pretrained(tiny_path))([dataset[0], dataset[1]])


# ---- registry -------------------------------------------------------------------------------------------------------
def test_callbacks_are_chosen_by_name():
    assert get_callbacks(PruningConfig(), LNV) == []
    (callback,) = get_callbacks(PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05), LNV)
    assert isinstance(callback, PruningCallback)
    config = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05, callbacks=["pruning"])
    assert len(get_callbacks(config, LNV)) == 1
    assert "pruning" in CALLBACKS
    with pytest.raises(ValueError, match="'nope' is not registered"):
        get_callbacks(PruningConfig(callbacks=["nope"]), LNV)
    with pytest.raises(ValueError, match="calibration"):
        get_callbacks(PruningConfig(pruning_method="wanda", pruning_sparsity=0.1), LNV)


# ---- LoRA + magnitude: exact, excluded, saved, reloaded bit for bit -------------------------------------------------
def test_lora_training_with_pruning_saves_masks_that_reload_exactly(tiny_path, dataset, tmp_path):
    config = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05)
    base = _load(tiny_path)
    frozen_before = {n: p.detach().clone() for n, p in base.named_parameters()}
    trainer = _trainer(base, tiny_path, tmp_path, dataset, config)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    trainer.save_model(str(tmp_path))
    model = trainer.model

    masks = _pruning(trainer).masks
    targets = collect_targets(model, LNV)
    total = sum(layer.weight.numel() for layer in targets.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.05 * total)  # exact sparsity
    for name, layer in targets.items():
        assert (layer.weight[~masks[name]] == 0).all(), name  # survived 4 optimizer steps
    for name, param in model.named_parameters():  # frozen non-targets untouched, LoRA trained
        if param.requires_grad:
            assert not torch.equal(param, lora_before[name]), name
        elif not any(name.replace("base_model.model.", "").startswith(t) for t in targets):
            assert torch.equal(param, frozen_before[name.replace("base_model.model.", "").replace(".base_layer", "")])

    for folder in (tmp_path / "checkpoint-2", tmp_path / "checkpoint-4", tmp_path):
        saved = load_masks(folder)
        assert saved is not None and all(torch.equal(saved[n], masks[n]) for n in masks), folder
    report = json.loads((tmp_path / "pruning.json").read_text())
    assert report["method"] == "magnitude" and report["step"] == 0
    assert report["sparsity_reached"] == pytest.approx(mask_sparsity(masks)[0])
    assert not list(tmp_path.glob("optimizer*"))  # optimizer state stays in the checkpoints

    inputs = _inputs(tiny_path, dataset)
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
        fresh = _load(tiny_path)
        apply_masks(fresh, load_masks(tmp_path))
        reloaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
        assert torch.equal(reloaded(**inputs).logits, expected)


# ---- full fine-tuning: the re-application is what keeps the zeros ---------------------------------------------------
@pytest.mark.parametrize("reapply_every", [1, 0])
def test_masks_survive_optimizer_steps_on_trainable_weights(tiny_path, dataset, tmp_path, reapply_every):
    config = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.10, pruning_reapply_every=reapply_every)
    model = _load(tiny_path)
    trainer = _trainer(model, tiny_path, tmp_path, dataset, config, peft=False, max_steps=2, save_strategy="no")
    trainer.train()
    masks = _pruning(trainer).masks
    regrown = sum(int((layer.weight[~masks[n]] != 0).sum()) for n, layer in collect_targets(model, LNV).items())
    if reapply_every:
        assert regrown == 0
    else:  # without re-application Adam moves the pruned weights off zero: the guard is needed
        assert regrown > 0


def test_pruning_at_a_later_step(tiny_path, dataset, tmp_path):
    config = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05, pruning_start_step=2)
    seen = []

    class Probe(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            seen.append(sum(int((layer.weight == 0).sum()) for layer in collect_targets(model, LNV).values()))

    trainer = _trainer(_load(tiny_path), tiny_path, tmp_path, dataset, config, max_steps=3, save_steps=1)
    trainer.add_callback(Probe())
    trainer.train()
    assert seen[0] == seen[1] == 0 and seen[2] > 0  # dense for steps 1-2, pruned after step 2
    assert load_masks(tmp_path / "checkpoint-1") is None
    assert load_masks(tmp_path / "checkpoint-2") is not None
    assert _pruning(trainer).metadata["step"] == 2


# ---- resume ---------------------------------------------------------------------------------------------------------
def test_resume_takes_the_checkpoints_masks_and_continues_the_same_curve(tiny_path, dataset, tmp_path):
    config = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05)
    full = _trainer(_load(tiny_path), tiny_path, tmp_path / "full", dataset, config)
    full.train()

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", resumed_dir / "checkpoint-2")
    checkpoint_masks = load_masks(resumed_dir / "checkpoint-2")
    # The checkpoint being resumed is an explicit input: geollava-train gives the callback its masks.
    given = SavedMasks.read(resumed_dir / "checkpoint-2")
    resumed = _trainer(_load(tiny_path), tiny_path, resumed_dir, dataset, config, masks=given)
    resumed.train(resume_from_checkpoint=str(resumed_dir / "checkpoint-2"))

    callback = _pruning(resumed)
    assert callback.metadata["masks_loaded_from"] == str(resumed_dir / "checkpoint-2")
    assert all(torch.equal(callback.masks[n], checkpoint_masks[n]) for n in checkpoint_masks)
    for name, layer in collect_targets(resumed.model, LNV).items():
        assert (layer.weight[~checkpoint_masks[name]] == 0).all(), name
    # log_history comes back from the checkpoint: steps 1-2 are the full run's, 3-4 the resumed run's own.
    assert len(_losses(resumed)) == len(_losses(full)) == 4
    np.testing.assert_allclose(_losses(resumed), _losses(full), rtol=1e-5)


# ---- wanda ----------------------------------------------------------------------------------------------------------
def test_wanda_callback_calibrates_on_training_batches(tiny_path, dataset, tmp_path):
    config = PruningConfig(pruning_method="wanda", pruning_sparsity=0.25, pruning_calibration_batches=2)
    trainer = _trainer(_load(tiny_path), tiny_path, tmp_path, dataset, config, max_steps=2, save_strategy="no")
    trainer.train()
    masks = _pruning(trainer).masks
    for name, layer in collect_targets(trainer.model, LNV).items():
        assert ((~masks[name]).sum(dim=1) == round(0.25 * layer.in_features)).all(), name
        assert (layer.weight[~masks[name]] == 0).all(), name
    report = json.loads((tmp_path / "pruning.json").read_text())
    assert report["method"] == "wanda" and report["comparison_group"] == "per-output-row"
    assert report["sparsity_reached"] == pytest.approx(0.25, abs=0.01)


# ---- QLoRA ----------------------------------------------------------------------------------------------------------
def _bnb_4bit():
    """The project's own QLoRA config (NF4, double quantization; vision and lm_head kept), fp32 compute on CPU."""
    return bitsandbytes_config(LNV, compute_dtype=torch.float32)


def test_qlora_trains_on_a_pruned_copy_and_saves_its_masks(tiny_path, dataset, tmp_path):
    config = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05)
    pruned = prune_before_quantization(tiny_path, config, tmp_path / "pruned", LNV)
    model = _load(pruned.path, quantization_config=_bnb_4bit())
    trainer = _trainer(
        model, tiny_path, tmp_path / "run", dataset, config, masks=pruned.masks, max_steps=2, save_strategy="no"
    )
    trainer.train()
    assert _pruning(trainer).metadata["masks_loaded_from"] == str(pruned.path)
    saved, original = load_masks(tmp_path / "run"), load_masks(pruned.path)
    assert saved.keys() == original.keys() and all(torch.equal(saved[n], original[n]) for n in saved)
    assert (tmp_path / "run" / MASKS_FILE).is_file()


def test_pruning_a_4bit_base_without_full_precision_weights_raises(tiny_path, dataset, tmp_path):
    config = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05)
    model = _load(tiny_path, quantization_config=_bnb_4bit())
    trainer = _trainer(model, tiny_path, tmp_path, dataset, config, max_steps=1, save_strategy="no")
    with pytest.raises(TypeError, match="prune_before_quantization"):
        trainer.train()


def test_masks_are_never_looked_up_in_the_models_folder(tiny_path, dataset, tmp_path):
    config = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.05)
    pruned = prune_before_quantization(tiny_path, config, tmp_path / "pruned", LNV)
    assert (pruned.path / MASKS_FILE).is_file()
    # The 4-bit base is the pruned copy, whose folder holds its masks; not given them, the callback refuses.
    model = _load(pruned.path, quantization_config=_bnb_4bit())
    trainer = _trainer(model, tiny_path, tmp_path / "run", dataset, config, max_steps=1, save_strategy="no")
    with pytest.raises(TypeError, match="give the callback its masks"):
        trainer.train()


def test_masks_that_do_not_fit_a_4bit_base_are_refused(tiny_path, dataset, tmp_path):
    config = PruningConfig(pruning_method="magnitude", pruning_sparsity=0.3)
    pruned = prune_before_quantization(tiny_path, config, tmp_path / "pruned", LNV)
    # The unpruned base, quantized, with another copy's masks: its weights are not zero where the masks prune.
    model = _load(tiny_path, quantization_config=_bnb_4bit())
    trainer = _trainer(
        model, tiny_path, tmp_path / "run", dataset, config, masks=pruned.masks, max_steps=1, save_strategy="no"
    )
    with pytest.raises(ValueError, match="non-zero weights where the masks prune"):
        trainer.train()
