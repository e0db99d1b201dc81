"""Where inference runs and in which dtype: one rule for geollava-eval, geollava-predict, the Space and selection.

* ``--device auto`` (the default) is the first CUDA device when one is available, else the CPU; ``cpu``, ``cuda`` and
  ``cuda:N`` ask for one explicitly, and asking for a CUDA device that is not there is an error, never a silent
  fallback to the CPU.
* The dtype is the one asked for; when none is asked (``None`` or ``"auto"``), bf16 on CUDA and the checkpoint's own
  dtype on the CPU.
* The model is placed on the device when it is loaded (:func:`trainer.models.loading.load_for_inference`), and every
  input follows the model's device (:func:`move_inputs`).
"""

import torch


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device that ``device`` names (``auto``: CUDA when available, else the CPU).

    Raises:
        ValueError: If the name is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, or names a CUDA device that this
            machine does not have.
    """
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    kind, colon, index = name.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise ValueError(f"device {device!r}: choose {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device on this machine (use --device cpu or auto)")
    n = int(index or 0)
    if n >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", n)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The weights dtype: ``dtype`` when given, else bf16 on CUDA and ``None`` (the checkpoint's own) on the CPU.

    Raises:
        ValueError: If ``dtype`` is not a torch floating dtype or its name (``bfloat16``, ``float16``, ``float32``).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype {dtype!r}: choose a torch floating dtype such as 'bfloat16', 'float16', 'float32'")
    return value


def model_device(model) -> torch.device:
    """The device of the model's parameters (the first one; models here sit on one device)."""
    return next(model.parameters()).device


def model_dtype(model) -> torch.dtype:
    """The floating dtype the model computes in (its first floating parameter; packed 4-bit weights are skipped)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def move_inputs(inputs, model) -> dict:
    """Model inputs on the model's device, floating ones (pixel values) in its dtype; other values as they are."""
    device, dtype = model_device(model), model_dtype(model)
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out


def place(model, device: torch.device, dtype: torch.dtype | None = None):
    """Move a (non-quantized) model to ``device`` (and ``dtype`` when given); a no-op when it is already there."""
    if dtype is not None and model_dtype(model) != dtype:
        model.to(device=device, dtype=dtype)
    elif model_device(model) != device:
        model.to(device)
    return model
