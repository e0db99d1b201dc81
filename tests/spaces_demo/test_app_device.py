"""The Space's device rule: load on the CPU, move inside the @spaces.GPU function (as ZeroGPU requires)."""

import pytest
import torch

from dataset_builder.prompts import PROMPT_TEMPLATES
from trainer.models.device import model_device, model_dtype


@pytest.fixture()
def app(space_model, monkeypatch):
    base, adapter = space_model
    monkeypatch.setenv("BASE_MODEL_ID", str(base))
    monkeypatch.setenv("ADAPTER_ID", str(adapter))
    monkeypatch.delenv("GEOLLAVA_DEVICE", raising=False)
    monkeypatch.delenv("GEOLLAVA_DTYPE", raising=False)
    from spaces_demo import app as module

    module._MODEL.clear()
    yield module
    module._MODEL.clear()


def test_the_model_is_loaded_on_the_cpu_whatever_the_device(app, monkeypatch):
    asked = []
    original = app.load_for_inference

    def spy(*args, **kwargs):
        asked.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(app, "load_for_inference", spy)
    monkeypatch.setenv("GEOLLAVA_DEVICE", "cuda")  # where it will run: still loaded on the CPU first (ZeroGPU)
    model = app.get_model()["model"]
    assert [a["device"] for a in asked] == ["cpu"]
    assert model_device(model) == torch.device("cpu") and model_dtype(model) == torch.float32


def test_the_gpu_function_moves_the_model_to_the_configured_device_and_dtype(app, pair_files, monkeypatch):
    before, after, _ = pair_files
    app.get_model()
    assert model_dtype(app.get_model()["model"]) == torch.float32
    # On this CPU-only machine "the device" is the CPU; GEOLLAVA_DTYPE stands in for bf16-on-CUDA.
    monkeypatch.setenv("GEOLLAVA_DEVICE", "cpu")
    monkeypatch.setenv("GEOLLAVA_DTYPE", "bfloat16")
    text, _, status = app.describe(str(before), str(after), None, PROMPT_TEMPLATES[0], 8)
    assert status.startswith("✅") and text
    model = app.get_model()["model"]
    assert model_device(model) == torch.device("cpu") and model_dtype(model) == torch.bfloat16


def test_asking_for_a_missing_gpu_is_reported_not_hidden(app, pair_files, monkeypatch):
    before, after, _ = pair_files
    monkeypatch.setenv("GEOLLAVA_DEVICE", "cuda")
    text, _, status = app.describe(str(before), str(after), None, PROMPT_TEMPLATES[0], 8)
    assert text == "" and "no CUDA device" in status
