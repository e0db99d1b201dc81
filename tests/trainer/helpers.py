"""What trainer and CCExpert tests build the same way: a tiny base with a random adapter, a 2-process launch."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForImageTextToText

from trainer.models.families import get_family
from trainer.tiny.build import build_tiny_model
from upload.loopback import free_port


ROOT = Path(__file__).resolve().parents[2]


def tiny_base_and_adapter(family: str, root: Path, corpus: list[str]) -> tuple[Path, Path]:
    """A tiny ``family`` base (32 px) in ``root/base`` and a LoRA adapter on it with random, non-zero B weights
    (r 4, seed 0) in ``root/adapter``: an adapter that changes the outputs, as a trained one does."""
    base = build_tiny_model(family, root / "base", image_size=32, corpus=corpus)
    lora = LoraConfig(r=4, target_modules=get_family(family).lora_target_modules, init_lora_weights=False)
    torch.manual_seed(0)
    get_peft_model(AutoModelForImageTextToText.from_pretrained(base), lora).save_pretrained(root / "adapter")
    return base, root / "adapter"


def launch_two_processes(
    script: str, launch: list[str], options: dict, env: dict, timeout: float
) -> subprocess.CompletedProcess:
    """``accelerate launch`` ``script`` (a ``trainer.sft`` entry) in 2 CPU processes on a free loopback port.

    Args:
        script: The file to launch.
        launch: The launcher's own flags (``--config_file ...``).
        options: The script's flags, ``{"max_steps": 4}`` -> ``--max_steps 4``.
        env: Extra environment (the repository is on PYTHONPATH and each process has one OpenMP thread).
        timeout: Seconds.

    Returns:
        The finished process; the test fails with its output's tail if it did not exit 0.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--main_process_port", str(free_port())]
    command.append(script)
    for name, value in options.items():
        command += [f"--{name}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def tiny_sft_args(config_class, out: Path, **overrides):
    """A short CPU training run's arguments (constant lr 1e-2, a log line per step, seed 0), as ``config_class``."""
    defaults = {"output_dir": str(out), "learning_rate": 1e-2, "lr_scheduler_type": "constant", "logging_steps": 1}
    defaults |= {"use_cpu": True, "seed": 0, "disable_tqdm": True}
    return config_class(**(defaults | overrides))
