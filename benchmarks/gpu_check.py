"""``make gpu-check``: the tiny chain on CUDA, then the 7B training benchmark; results in benchmarks/results/gpu_*.

    make gpu-check                                                           # on a CUDA machine; one command
    .venv/bin/python benchmarks/gpu_check.py --dry_run true --out_dir /tmp/c  # the same chain on the CPU (make test)

``pytest -m gpu``, then synthetic data, NF4 QLoRA + 5 % pruning, batched evaluation, prediction and the Space's
function on CUDA, each step checked and timed, then ``benchmarks/gpu_train.py``. Without a CUDA device it stops at
once (exit 1). See docs/training.md "Benchmarks".
"""

import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import bitsandbytes
import torch
import transformers
from datasets import load_dataset
from transformers import HfArgumentParser


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from dataset_builder.atomic import write_json, write_text  # noqa: E402
from dataset_builder.build import BuildConfig, build  # noqa: E402
from dataset_builder.prompts import PROMPT_TEMPLATES  # noqa: E402
from dataset_builder.synthetic.synth import SynthConfig, generate_tree  # noqa: E402
from spaces_demo import app  # noqa: E402
from trainer.evaluation.predict import main as predict_main  # noqa: E402
from trainer.evaluation.run_eval import main as eval_main  # noqa: E402
from trainer.sft import main as train_main  # noqa: E402
from trainer.tiny.build import build_tiny_model  # noqa: E402


RESULTS = HERE / "results"
NO_CUDA = (
    "gpu-check: no CUDA device: `make gpu-check` needs an NVIDIA GPU that torch can see "
    "(torch.cuda.is_available() is False here); nothing was run"
)


@dataclass
class GpuCheckConfig:
    """Options of the GPU check."""

    dry_run: bool = field(default=False, metadata={"help": "Run the chain on the CPU, fewer steps, no GPU parts."})
    train_steps: int = field(default=40, metadata={"help": "Optimizer steps of the tiny QLoRA + pruning run."})
    eval_rows: int = field(default=32, metadata={"help": "Test rows generated and scored."})
    gpu_train_timeout: int = field(default=480, metadata={"help": "Seconds allowed to benchmarks/gpu_train.py."})
    out_dir: str | None = field(default=None, metadata={"help": "Where gpu_chain.json/.md go (dry run: nowhere)."})


def run_quietly(main, argv: list[str]) -> tuple[int, str]:
    """Call a console script's ``main`` in process; returns its exit status and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    return int(status or 0), out.getvalue()


def gpu_tests() -> dict:
    """The ``gpu``-marked tests, on the first visible device."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    env = {**os.environ, "GEOLLAVA_TEST_CUDA": first}
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/trainer/test_pruning_gpu.py", "-q"]
    proc = subprocess.run([*command, "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"pytest -m gpu failed:\n{proc.stdout[-2000:]}")
    return {"pytest": proc.stdout.strip().splitlines()[-1]}


def make_data(root: Path) -> dict:
    """Synthetic fMoW scenes built into a Hub-layout dataset folder."""
    generate_tree(SynthConfig(out=str(root / "fmow"), locations=60, seed=0, image_size=96, oversize_fraction=0))
    build(BuildConfig(fmow_root=str(root / "fmow"), out=str(root / "dataset"), frame_size=64, sample_size=0))
    return {"dataset": str(root / "dataset")}


def train(root: Path, device: str, steps: int) -> dict:
    """The tiny base and geollava-train with the QLoRA + 5 % pruning recipe; checks what the run wrote."""
    base = build_tiny_model("llava-next-video", root / "base", image_size=64)
    cuda = device == "cuda"
    argv = ["--config", "trainer/recipes/tiny/qlora_prune.yaml", "--model_name_or_path", str(base)]
    argv += ["--dataset_name", str(root / "dataset"), "--output_dir", str(root / "adapter"), "--max_steps", str(steps)]
    argv += [
        "--use_cpu",
        str(not cuda).lower(),
        "--bf16",
        str(cuda).lower(),
        "--dtype",
        "bfloat16" if cuda else "float32",
    ]
    argv += ["--logging_steps", "5", "--disable_tqdm", "true", "--plot", "false"]
    status, _ = run_quietly(train_main, argv)
    summary = json.loads((root / "adapter" / "run_summary.json").read_text())
    adapter_config = json.loads((root / "adapter" / "adapter_config.json").read_text())
    pruning = summary["pruning"]
    checks = {
        "exit_status": status,
        "trained_on": summary["distributed"]["device"],
        "quantization": summary["model"]["quantization"],
        "sparsity_reached": pruning["sparsity_reached"],
        "pruned_exactly": pruning["n_pruned"] == round(0.05 * pruning["n_weights"]),
        "adapter_names_the_real_base": adapter_config["base_model_name_or_path"] == str(base),
        "samples_per_second": summary["throughput"].get("samples_per_second"),
    }
    ok = status == 0 and checks["trained_on"].startswith(device) and checks["quantization"] == "nf4"
    if not (ok and checks["pruned_exactly"] and checks["adapter_names_the_real_base"]):
        raise RuntimeError(f"training checks failed: {checks}")
    return checks


def evaluate(root: Path, device: str, rows: int) -> dict:
    """geollava-eval on the test split, batched on the device."""
    out = root / "eval"
    argv = ["--model", str(root / "base"), "--adapter", str(root / "adapter"), "--dataset", str(root / "dataset")]
    argv += ["--split", "test", "--limit", str(rows), "--batch_size", "8", "--max_new_tokens", "48"]
    argv += ["--device", device, "--out", str(out), "--model_metrics", "false", "--meteor", "false"]
    status, _ = run_quietly(eval_main, argv)
    metrics = json.loads((out / "metrics.json").read_text())
    checks = {
        "exit_status": status,
        "generated_on": metrics["run"]["generation_device"],
        "rows": metrics["n_rows"],
        "rows_per_s": metrics["run"]["rows_per_s"],
        "rougeL": metrics.get("rougeL"),
    }
    if status or not str(checks["generated_on"]).startswith(device) or checks["rows"] != rows:
        raise RuntimeError(f"evaluation checks failed: {checks}")
    return checks


def frames(root: Path) -> tuple[Path, Path]:
    """The two frames of the first test row, as PNG files."""
    row = load_dataset(str(root / "dataset"), split="test")[0]
    paths = root / "before.png", root / "after.png"
    for image, path in zip(row["frames"], paths, strict=True):
        image.save(path)
    return paths


def predict(root: Path, device: str) -> dict:
    """geollava-predict on one pair, in bf16/fp32 and 4-bit."""
    before, after = frames(root)
    common = ["--model", str(root / "base"), "--adapter", str(root / "adapter"), "--device", device]
    status, text = run_quietly(predict_main, [*common, "--max_new_tokens", "48", str(before), str(after)])
    status_4bit, text_4bit = run_quietly(
        predict_main, [*common, "--max_new_tokens", "48", "--load_in_4bit", "true", str(before), str(after)]
    )
    checks = {
        "exit_status": status,
        "text": text.strip(),
        "exit_status_4bit": status_4bit,
        "text_4bit": text_4bit.strip(),
    }
    if status or status_4bit or not checks["text"] or not checks["text_4bit"]:
        raise RuntimeError(f"prediction checks failed: {checks}")
    return checks


def space(root: Path, device: str, predicted: str) -> dict:
    """The Space's describe(): loaded on the CPU, moved to the device inside its GPU function."""
    os.environ.update(BASE_MODEL_ID=str(root / "base"), ADAPTER_ID=str(root / "adapter"), GEOLLAVA_DEVICE=device)
    app._MODEL.clear()
    before, after = frames(root)
    text, _, status = app.describe(str(before), str(after), None, PROMPT_TEMPLATES[0], 48)
    model = app.get_model()["model"]
    checks = {
        "status": status.splitlines()[0],
        "model_on": str(next(model.parameters()).device),
        "text": text,
        "same_text_as_geollava_predict": text == predicted,
    }
    if not status.startswith("✅") or not checks["model_on"].startswith(device) or not text:
        raise RuntimeError(f"Space checks failed: {checks}")
    return checks


def render(result: dict) -> str:
    """The chain's results as Markdown."""
    lines = [
        "# GPU check: the tiny chain"
        + (" (dry run on the CPU: nothing here is a GPU figure)" if result["dry_run"] else " on CUDA"),
        "",
        f"Device: {result['device']}; torch {result['versions']['torch']}, transformers "
        f"{result['versions']['transformers']}, bitsandbytes {result['versions']['bitsandbytes']}. "
        f"Total {result['total_seconds']} s, peak GPU memory {result['peak_gpu_memory_gib']} GiB.",
        "",
        "| step | result | seconds | checks |",
        "|---|---|---|---|",
    ]
    for step in result["steps"]:
        detail = step.get("error") or ", ".join(f"{k}: {v}" for k, v in step["checks"].items() if "text" not in k)
        lines.append(f"| {step['name']} | {'ok' if step['ok'] else 'FAILED'} | {step['seconds']} | {detail} |")
    return "\n".join(lines) + "\n"


def run_chain(check: GpuCheckConfig, root: Path) -> dict:
    """Run the steps in order, timing each; the first failure stops the chain."""
    device = "cpu" if check.dry_run else "cuda"
    steps = [] if check.dry_run else [("pytest -m gpu", gpu_tests)]
    steps += [
        ("synthetic data + geollava-build", lambda: make_data(root)),
        ("geollava-train: tiny QLoRA NF4 + 5 % pruning", lambda: train(root, device, check.train_steps)),
        (f"geollava-eval --device {device}", lambda: evaluate(root, device, check.eval_rows)),
        (f"geollava-predict --device {device}", lambda: predict(root, device)),
    ]
    done, start = [], time.perf_counter()
    for name, step in [*steps, ("the Space's describe()", None)]:
        began = time.perf_counter()
        try:
            checks = step() if step else space(root, device, done[-1]["checks"]["text"])
            done.append({"name": name, "ok": True, "checks": checks})
        except Exception as error:  # noqa: BLE001 - recorded and reported; the chain stops here
            done.append({"name": name, "ok": False, "error": f"{type(error).__name__}: {error}"})
        done[-1]["seconds"] = round(time.perf_counter() - began, 1)
        if not done[-1]["ok"]:
            break
    cuda = torch.cuda.is_available() and not check.dry_run
    return {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.machine()}, dry run)",
        "dry_run": check.dry_run,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "bitsandbytes": bitsandbytes.__version__, "cuda": torch.version.cuda},
        "steps": done,
        "ok": all(s["ok"] for s in done) and len(done) == len(steps) + 1,
        "total_seconds": round(time.perf_counter() - start, 1),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make gpu-check``."""
    (check,) = HfArgumentParser(GpuCheckConfig).parse_args_into_dataclasses(args=argv)
    if not check.dry_run and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        result = run_chain(check, Path(tmp))
    out_dir = check.out_dir or (None if check.dry_run else str(RESULTS))
    if out_dir:
        write_json(Path(out_dir) / "gpu_chain.json", result, indent=2)
        write_text(Path(out_dir) / "gpu_chain.md", render(result))
    print(render(result))
    if not result["ok"]:
        return 1
    if check.dry_run:
        return 0
    command = [sys.executable, str(HERE / "gpu_train.py"), "--require_cuda", "true"]
    try:
        return subprocess.run(command, cwd=ROOT, timeout=check.gpu_train_timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"gpu-check: benchmarks/gpu_train.py ran past {check.gpu_train_timeout} s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
