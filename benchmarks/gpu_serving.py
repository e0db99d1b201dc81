"""The GPU check's serving steps: the 7B-shaped export, and an evaluation through ``vllm serve`` when vLLM is there.

    .venv/bin/python benchmarks/gpu_serving.py --dry_run true  # the same steps on the CPU, tiny, in minutes

Each step is a function returning ``{"name", "ok", "seconds", ...}`` for the GPU check's runner. vLLM pins its own
torch, so it lives in its own venv (``GEOLLAVA_VLLM``: its ``vllm`` executable); without it the vLLM step is skipped
with a message. Run alone, it serves the merged tiny release; the dry mode is tiny and serves with transformers.
See docs/evaluation.md "At scale".
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from bench_prune import PEAK  # noqa: E402
from gpu_model import build_random_model, real_config, tiny_config  # noqa: E402


#: Where the vLLM venv's executable is named (vLLM pins its own torch: never the project's venv).
VLLM_ENV = "GEOLLAVA_VLLM"
EXPORT = f"""
import json, sys, time
from trainer.export import export_merged
start = time.perf_counter()
report = export_merged(sys.argv[1], sys.argv[2], sys.argv[3])
print(json.dumps({{"seconds": time.perf_counter() - start, "peak_rss_kib": {PEAK}, "merged_by": report.merged_by,
                  "lora_modules": report.lora_modules, "masked_modules": report.masked_modules}}))
"""


def vllm_executable() -> str | None:
    """The ``vllm`` of its own venv (``GEOLLAVA_VLLM``), else one on ``PATH``; ``None`` when there is none."""
    named = os.environ.get(VLLM_ENV)
    if named:
        return named if Path(named).is_file() else None
    return shutil.which("vllm")


def export_7b(root: Path, dry_run: bool = False, lora_r: int = 64) -> dict:
    """Export a LoRA adapter (5 % masks) of a 7B-shaped bf16 LLaVA-NeXT-Video checkpoint; peak RSS and time.

    Args:
        root: A folder for the checkpoint, the adapter and the merged model (~30 GB at 7B).
        dry_run: The tiny config instead of the 7B one (the same code path, on the CPU).
        lora_r: The adapter's rank.

    Returns:
        ``name``, ``ok`` (the merged model loads, peak RSS within the largest shard + adapter + 1 GiB), the
        sizes, ``peak_rss_gib`` and ``seconds``.
    """
    from peft import LoraConfig, get_peft_model

    from tests.serving.helpers import random_masks
    from trainer.models.families import get_family
    from trainer.pruning.masks import save_masks
    from trainer.tiny.build import build_tiny_model

    start = time.perf_counter()
    base, adapter, merged = root / "base-7b", root / "adapter-7b", root / "merged-7b"
    model = build_random_model(tiny_config() if dry_run else real_config(), "cpu", torch.bfloat16)
    model.save_pretrained(base, max_shard_size="5GB")
    # export writes the processor beside the weights; this checkpoint is for memory and time, not for serving
    tiny = build_tiny_model("llava-next-video", root / "processor", image_size=32)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny / name, base / name)
    lora = LoraConfig(r=lora_r, target_modules=get_family("llava-next-video").lora_target_modules)
    lora.init_lora_weights = False
    get_peft_model(model, lora).save_pretrained(adapter)
    del model
    save_masks(random_masks(base, "llava-next-video", 0.05), adapter, {"method": "random", "target_sparsity": 0.05})
    proc = subprocess.run(
        [sys.executable, "-c", EXPORT, str(adapter), str(merged), str(base)], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode:
        return {"name": "geollava-export, 7B-shaped", "ok": False, "error": proc.stderr[-3000:]}
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    shards = [p.stat().st_size for p in base.glob("*.safetensors")]
    adapter_bytes = sum(p.stat().st_size for p in adapter.glob("*.safetensors"))
    peak = child["peak_rss_kib"] * 1024
    return {
        "name": "geollava-export, " + ("tiny (dry run)" if dry_run else "7B-shaped"),
        "ok": peak <= max(shards) + adapter_bytes + 2**30 and (merged / "config.json").is_file(),
        "checkpoint_gib": sum(shards) / 2**30,
        "largest_shard_gib": max(shards) / 2**30,
        "adapter_gib": adapter_bytes / 2**30,
        "peak_rss_gib": peak / 2**30,
        "export_seconds": round(child["seconds"], 1),
        "seconds": round(time.perf_counter() - start, 1),
        "merged": str(merged),
    }


def vllm_eval(merged: Path, dataset: Path, out: Path, dry_run: bool = False, rows: int = 64) -> dict:
    """``geollava-eval --server`` against ``vllm serve MERGED`` (in its own venv); skipped without vLLM.

    Args:
        merged: A merged model folder (``geollava-export``) with its own processor: the tiny release, or the export of
            a real trained adapter (the 7B-shaped checkpoint of :func:`export_7b` carries a stand-in tokenizer).
        dataset: A dataset folder with a ``test`` split.
        out: The evaluation's output folder.
        dry_run: ``transformers serve`` instead of vLLM (the same client path, on the CPU).
        rows: Rows to evaluate.

    Returns:
        ``name``, ``ok``, ``rows_per_s``, the client's and the server's seconds per row; or ``skipped`` and why.
    """
    from trainer.evaluation.run_eval import main as eval_main
    from upload.loopback import free_port, wait_until_up

    name = "geollava-eval --server: " + ("transformers serve (dry run)" if dry_run else "vllm serve")
    start = time.perf_counter()
    port = free_port()
    if dry_run:
        command = [str(Path(sys.executable).with_name("transformers")), "serve", str(merged), "--device", "cpu"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "serving" / "server_site")}
    else:
        vllm = vllm_executable()
        if vllm is None:
            return {
                "name": name,
                "ok": True,
                "skipped": f"no vLLM: install it in its own venv and name its executable in {VLLM_ENV} "
                "(docs/evaluation.md); no figure claimed",
            }
        command = [vllm, "serve", str(merged), "--limit-mm-per-prompt", '{"video": 1}', "--max-model-len", "4096"]
        env = dict(os.environ)
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = out.with_name(out.name + "-server.log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/v1/models", server, log, timeout_s=900)
        args = ["--model", str(merged), "--dataset", str(dataset), "--out", str(out), "--split", "test"]
        args += ["--server", f"http://127.0.0.1:{port}/v1", "--concurrency", "32", "--limit", str(rows)]
        code = eval_main([*args, "--max_new_tokens", "128", "--meteor", "false", "--model_metrics", "false"])
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    if code:
        return {"name": name, "ok": False, "error": f"geollava-eval exited {code}; server log {log}"}
    run = json.loads((out / "metrics.json").read_text())["run"]
    return {
        "name": name,
        "ok": True,
        "rows": run["rows_generated"],
        "rows_per_s": run["rows_per_s"],
        "client_seconds_per_row": run["client_seconds_per_row"],
        "server_seconds_per_row": run["server_seconds_per_row"],
        "seconds": round(time.perf_counter() - start, 1),
    }


@dataclass
class GpuServingConfig:
    """Options of the serving steps run alone."""

    dry_run: bool = field(default=False, metadata={"help": "Tiny, on the CPU, transformers serve for vLLM."})
    rows: int = field(default=64, metadata={"help": "Rows the vLLM evaluation captions."})
    workdir: str | None = field(default=None, metadata={"help": "Where models go (default: a temp dir)."})


def main(argv: list[str] | None = None) -> int:
    """Run both steps (a synthetic tiny split for the evaluation) and print their results as JSON."""
    (config,) = HfArgumentParser(GpuServingConfig).parse_args_into_dataclasses(args=argv)
    from tests.serving.helpers import tiny_release, tiny_split

    with tempfile.TemporaryDirectory(prefix="gpu-serving-", dir=config.workdir) as tmp:
        root = Path(tmp)
        steps = [export_7b(root, dry_run=config.dry_run)]
        release = tiny_release("llava-next-video", root / "tiny")
        data = tiny_split(root, n=config.rows)
        steps.append(vllm_eval(release.merged, data, root / "eval", config.dry_run, config.rows))
    print(json.dumps(steps, indent=2))
    return 0 if all(step["ok"] for step in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
