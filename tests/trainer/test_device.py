"""The one device/dtype rule of inference: --device auto|cpu|cuda[:N], bf16 on CUDA, inputs follow the model.

No GPU here: CUDA's presence is faked with monkeypatch where the rule only decides; `make gpu-check` runs it for real.
"""

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.evaluation import predict, run_eval
from trainer.evaluation.generation import encode_batch, generate_batch
from trainer.models import loading
from trainer.models.device import model_device, model_dtype, move_inputs, place, resolve_device, resolve_dtype
from trainer.models.loading import load_for_inference
from trainer.tiny.build import build_tiny_model


CORPUS = [*PROMPT_TEMPLATES, "A new road was built in the north."]


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA 'available' with two devices: only the decision is tested, nothing runs on them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model("llava-next-video", tmp_path_factory.mktemp("tiny"), image_size=32, corpus=CORPUS)


def test_auto_is_cpu_without_cuda_and_cuda_with_it(monkeypatch):
    assert not torch.cuda.is_available()
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_a_missing_or_unknown_device_is_an_error_never_a_silent_cpu_run(fake_cuda, monkeypatch):
    with pytest.raises(ValueError, match="2 CUDA device"):
        resolve_device("cuda:2")
    for bad in ("gpu", "cuda:x", "tpu:0", "cuda:"):
        with pytest.raises(ValueError, match="choose auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


def test_dtype_is_bf16_on_cuda_unless_asked_and_the_checkpoints_on_cpu():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resolve_dtype(None, cuda) == resolve_dtype("auto", cuda) == torch.bfloat16
    assert resolve_dtype("float32", cuda) == torch.float32 and resolve_dtype(torch.float16, cuda) == torch.float16
    assert resolve_dtype(None, cpu) is None and resolve_dtype("auto", cpu) is None
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    for bad in ("int8", "float64x", "cuda"):
        with pytest.raises(ValueError, match="floating dtype"):
            resolve_dtype(bad, cpu)


def test_inputs_follow_the_models_device_and_dtype(tiny):
    model = AutoModelForImageTextToText.from_pretrained(tiny).to(dtype=torch.bfloat16)
    inputs = {"input_ids": torch.tensor([[1, 2]]), "pixel_values_videos": torch.rand(1, 2, 3, 32, 32), "n": 3}
    moved = move_inputs(inputs, model)
    assert moved["input_ids"].dtype == torch.int64 and moved["pixel_values_videos"].dtype == torch.bfloat16
    assert moved["n"] == 3
    model.to("meta")  # another device than the inputs': they must go where the model is
    moved = move_inputs(inputs, model)
    assert all(v.device.type == "meta" for v in moved.values() if isinstance(v, torch.Tensor))


def test_load_places_the_model_and_generation_runs_there(tiny):
    model, processor, family = load_for_inference(tiny, device="cpu", dtype="bfloat16")
    assert model_device(model) == torch.device("cpu") and model_dtype(model) == torch.bfloat16
    frames = [[np.full((32, 32, 3), v, np.uint8), np.full((32, 32, 3), 255 - v, np.uint8)] for v in (0, 90)]
    batch = encode_batch(processor, family, ["What changed?"] * 2, frames)
    assert batch["pixel_values_videos"].dtype == torch.float32  # the processor's; generate_batch casts it
    texts = generate_batch(model, processor, family, ["What changed?"] * 2, frames, max_new_tokens=3)
    assert len(texts) == 2
    with pytest.raises(ValueError, match="no CUDA device"):
        load_for_inference(tiny, device="cuda")


def test_auto_with_cuda_loads_in_bf16_straight_onto_the_gpu(tiny, fake_cuda, monkeypatch):
    calls = []
    original = AutoModelForImageTextToText.from_pretrained

    def spy(path, **kwargs):
        calls.append(dict(kwargs))
        kwargs.pop("device_map", None)  # no GPU here: load on the CPU after recording what was asked
        return original(path, **kwargs)

    monkeypatch.setattr(loading.AutoModelForImageTextToText, "from_pretrained", spy)
    model, _, _ = load_for_inference(tiny)
    assert calls == [{"dtype": torch.bfloat16, "device_map": {"": "cuda:0"}}]
    assert model_dtype(model) == torch.bfloat16
    calls.clear()
    load_for_inference(tiny, device="cuda:1", dtype="float32")
    assert calls == [{"dtype": torch.float32, "device_map": {"": "cuda:1"}}]
    calls.clear()
    load_for_inference(tiny, device="cpu")
    assert calls == [{"dtype": "auto"}]  # the CPU keeps the checkpoint's dtype (never fp32 by default), no device map


def test_place_moves_once_and_is_a_no_op_after(tiny):
    model = AutoModelForImageTextToText.from_pretrained(tiny)
    weight = model.lm_head.weight
    place(model, torch.device("cpu"))
    assert model.lm_head.weight is weight  # already there: nothing moved or copied
    place(model, torch.device("cpu"), torch.bfloat16)
    assert model_dtype(model) == torch.bfloat16


@pytest.mark.parametrize("cli", [predict.PredictConfig, run_eval.EvalConfig])
def test_the_clis_take_device_and_name_a_bad_one(cli, tmp_path):
    required = {"model": "m"} if cli is predict.PredictConfig else {"model": "m", "dataset": "d", "out": str(tmp_path)}
    assert cli(**required).device == "auto"
    assert cli(**required, device="cpu").device == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        cli(**required, device="cuda:0")
    with pytest.raises(ValueError, match="floating dtype"):
        cli(**required, dtype="int8")
