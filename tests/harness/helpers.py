"""What the harness tests share: a local copy of a shipped task, one run of lmms-eval's own CLI and its files."""

import glob
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.evaluation.lmms_tasks.cli import TASKS_DIR


LMMS_EVAL = Path(sys.executable).parent / "lmms-eval"


def local_task(folder: Path, shipped: str, dataset: Path | str) -> str:
    """Write ``folder/{shipped}_local.yaml``: the shipped task with ``dataset_path`` set, the lmms-eval way."""
    name = f"{shipped}_local"
    text = f"include: {TASKS_DIR / f'{shipped}.yaml'}\ntask: {name}\ndataset_path: {dataset}\n"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return name


@dataclass
class LmmsEvalRun:
    """What one ``lmms-eval`` command left: its output, its results file (``None``: none written), its samples."""

    returncode: int
    output: str
    results: dict | None
    samples: list[dict]


def run_lmms_eval(
    workdir: Path, task: str, model: str, model_args: str, *extra: str, include: Path | None = None, hub: bool = False
) -> LmmsEvalRun:
    """Run lmms-eval's own CLI on ``task``, defined under ``include`` (default ``workdir/tasks``), in ``workdir``.

    Samples are logged to ``workdir/out``. Offline unless ``hub``: then a Hub id resolves through ``HF_ENDPOINT``,
    the loopback Hub of the test session.
    """
    out = workdir / "out"
    command = [str(LMMS_EVAL), "--model", model, "--model_args", model_args, "--tasks", task]
    command += ["--include_path", str(include or workdir / "tasks"), "--output_path", str(out), "--log_samples"]
    command += extra
    # The harness answers 0 whatever happened (a failed evaluation is a logged traceback): its files say what ran.
    env = {**os.environ, "OPENAI_API_KEY": "EMPTY"}
    if not hub:
        env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    results = sorted(glob.glob(str(out / "**" / "*_results.json"), recursive=True))
    samples = sorted(glob.glob(str(out / "**" / f"*_samples_{task}.jsonl"), recursive=True))
    return LmmsEvalRun(
        returncode=proc.returncode,
        output=proc.stdout + proc.stderr,
        results=json.loads(Path(results[-1]).read_text()) if results else None,
        samples=[json.loads(line) for line in Path(samples[-1]).read_text().splitlines()] if samples else [],
    )
