import json
from pathlib import Path

import pytest
import torch
import yaml
from datasets import load_dataset
from levircc_fixtures import write_levircc_tree
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import SFTTrainer, TrlParser

from dataset_builder.levircc import LevirCCBuildConfig, build_levircc
from trainer.evaluation.selection import BestBySmCallback, evaluate_captions
from trainer.pruning.methods import PruningConfig
from trainer.training.ccexpert_stages import (
    CCExpertStageArguments,
    apply_stage,
    flatten_references,
    is_trainable_in_stage,
    stage_optimizer,
)
from trainer.training.collator import VideoSFTCollator
from trainer.training.config import GeoModelConfig, GeoScriptArguments, GeoSFTConfig


RECIPES = Path(__file__).resolve().parents[2] / "trainer" / "recipes" / "ccexpert"


@pytest.fixture(scope="module")
def levircc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("levircc")
    write_levircc_tree(tmp / "tree", {"train": 4, "val": 2, "test": 2})
    build_levircc(LevirCCBuildConfig(root=str(tmp / "tree"), out=str(tmp / "ds")))
    return tmp / "ds"


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(model, before):
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def _run_stage(model_dir, stage, train_rows, out, *, epochs=None, steps=None, callbacks=()):
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    args = GeoSFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        max_steps=steps or -1,
        num_train_epochs=epochs or 1,
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        seed=0,
    )
    before = _snapshot(model)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        processing_class=processor,
        data_collator=VideoSFTCollator(processor, "ccexpert"),
        optimizers=(stage_optimizer(model, stage, args), None),
        callbacks=list(callbacks),
    )
    trainer.train()
    return model, processor, trainer, _changed(model, before)


def test_three_stages_train_only_their_parameters(tiny_ccexpert, levircc, tmp_path):
    train = load_dataset(str(levircc), split="train")
    flat = train.map(flatten_references, batched=True)
    assert len(flat) == 5 * len(train) and flat[1]["conversations"][1]["value"] == train[0]["references"][1]

    # Stage I: projector and integration module only.
    model, _, _, changed = _run_stage(tiny_ccexpert, 1, flat, tmp_path / "s1", steps=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    assert {n.split(".")[1] for n in changed} == {"multi_modal_projector", "integration_module"}
    model.save_pretrained(tmp_path / "s1")
    AutoProcessor.from_pretrained(tiny_ccexpert).save_pretrained(tmp_path / "s1")

    # Stage II: everything, the vision tower at 0.2x the learning rate.
    model, _, trainer, changed = _run_stage(tmp_path / "s1", 2, flat, tmp_path / "s2", steps=2)
    parts = {n.split(".")[1] if n.startswith("model.") else n.split(".")[0] for n in changed}
    assert parts == {
        "vision_tower",
        "multi_modal_projector",
        "integration_module",
        "language_model",
        "lm_head",
        "image_newline",
    }
    assert all(p.requires_grad for p in model.parameters())
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["vision_tower"] == pytest.approx(0.2 * lrs["main"]) and lrs["main"] == pytest.approx(1e-3)
    vision = {id(p) for g in trainer.optimizer.param_groups if g["name"] == "vision_tower" for p in g["params"]}
    assert vision == {id(p) for n, p in model.named_parameters() if n.startswith("model.vision_tower.")}
    model.save_pretrained(tmp_path / "s2")
    AutoProcessor.from_pretrained(tiny_ccexpert).save_pretrained(tmp_path / "s2")

    # Stage III: SFT on LEVIR-CC train, best checkpoint by S*m on validation.
    validation = load_dataset(str(levircc), split="validation")
    processor = AutoProcessor.from_pretrained(tmp_path / "s2")
    best = tmp_path / "s3" / "best"
    callback = BestBySmCallback(validation, processor, "ccexpert", best, max_new_tokens=8)
    model, _, _, changed = _run_stage(tmp_path / "s2", 3, train, tmp_path / "s3", epochs=2, callbacks=[callback])
    assert any(n.startswith("model.vision_tower.") for n in changed)
    selection = json.loads((best / "selection.json").read_text())
    assert selection["split"] == "validation" and selection["metric"] == "s_m"
    assert [h["epoch"] for h in selection["history"]] == [1.0, 2.0]
    best_value = max(h["s_m"] for h in selection["history"])
    assert selection["best"]["s_m"] == best_value
    assert selection["best"] == next(h for h in selection["history"] if h["s_m"] == best_value)  # earliest on ties
    # The saved best model regenerates exactly the validation captions it was chosen on.
    reloaded = AutoModelForImageTextToText.from_pretrained(best)
    metrics, predictions = evaluate_captions(
        reloaded, AutoProcessor.from_pretrained(best), "ccexpert", validation, max_new_tokens=8, meteor=False
    )
    saved = [json.loads(line)["prediction"] for line in (best / "val_predictions.jsonl").read_text().splitlines()]
    assert predictions == saved
    assert metrics["cider_d"] == pytest.approx(selection["best"]["cider_d"])

    # The chosen model is scored on the test split with the LEVIR-CC metrics by geollava-eval (5 references).
    from trainer.evaluation.run_eval import main as eval_main

    out = tmp_path / "eval"
    args = ["--model", str(best), "--dataset", str(levircc), "--split", "test", "--out", str(out)]
    assert eval_main([*args, "--max_new_tokens", "8", "--model_metrics", "false"]) == 0
    scores = json.loads((out / "metrics.json").read_text())
    assert scores["n_rows"] == 2 and {"bleu4", "meteor", "rougeL_coco", "cider_d", "s_m"} <= set(scores)
    assert scores["s_m"] == pytest.approx(
        (scores["bleu4"] + scores["meteor"] + scores["rougeL_coco"] + scores["cider_d"]) / 4
    )
    first = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert len(first["references"]) == 5


def test_stage_rules_and_peft_names(tiny_ccexpert):
    assert is_trainable_in_stage("base_model.model.model.integration_module.output_gate", 1)
    assert not is_trainable_in_stage("base_model.model.model.language_model.layers.0.mlp.up_proj.weight", 1)
    assert is_trainable_in_stage("base_model.model.model.language_model.layers.0.mlp.up_proj.lora_A.default.weight", 1)
    with pytest.raises(ValueError, match="stage 4"):
        is_trainable_in_stage("x", 4)
    model = AutoModelForImageTextToText.from_pretrained(tiny_ccexpert)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=r".*language_model.*\.q_proj"))
    groups = apply_stage(peft_model, 1, learning_rate=1e-4)
    assert [g["name"] for g in groups] == ["main"]
    names = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert names and all(
        ("lora_" in n) or (".integration_module." in n) or (".multi_modal_projector." in n) for n in names
    )
    assert any("lora_" in n for n in names)
    with pytest.raises(ValueError, match="vision_lr_multiplier -1"):
        apply_stage(model, 2, learning_rate=1e-4, vision_lr_multiplier=-1)


def test_stage_arguments_refuse_selection_on_test():
    with pytest.raises(ValueError, match="selection_split 'test'"):
        CCExpertStageArguments(ccexpert_stage=3, selection_split="test")
    with pytest.raises(ValueError, match="ccexpert_stage 4"):
        CCExpertStageArguments(ccexpert_stage=4)


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_parse_with_the_trainer_options(recipe, tmp_path):
    parser = TrlParser((GeoScriptArguments, GeoSFTConfig, GeoModelConfig, PruningConfig, CCExpertStageArguments))
    script, training, model, _, stage = parser.parse_args_and_config(
        args=["--config", str(recipe), "--output_dir", str(tmp_path)]
    )
    header = recipe.read_text().splitlines()[0]
    assert header.startswith("#") and ("GPU" in recipe.read_text() or "CPU" in recipe.read_text())
    assert stage.ccexpert_stage == int(recipe.name.split("stage")[1][0])
    if stage.ccexpert_stage == 3:
        assert stage.selection_split == "validation"
    if stage.ccexpert_stage >= 2:
        assert stage.vision_lr_multiplier == 0.2
    assert yaml.safe_load(recipe.read_text())["model_name_or_path"] == model.model_name_or_path


def test_there_are_three_stages_for_each_size():
    names = {p.name for p in RECIPES.glob("*.yaml")}
    assert names == {f"{size}_stage{s}.yaml" for size in ("tiny", "0.5b", "7b") for s in (1, 2, 3)}
