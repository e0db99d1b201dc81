"""`make quickstart`: the main job end to end on the embedded default (synthetic fMoW + a tiny LLaVA-NeXT-Video).

    make quickstart            # reuses what is already done and valid
    make quickstart FRESH=1    # starts over

Every stage runs the project's console scripts as a user would, prints one line with its time, and leaves its output
under outputs/quickstart/. The last stage pushes the dataset, the adapter and the Space to a loopback Hub
(`geollava-hub`, a stand-in for huggingface.co) and loads them back in a fresh process with an empty cache.
"""

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OUT = ROOT / "outputs" / "quickstart"
ORG = "geollava-org"
REPOS = {"dataset": f"{ORG}/geollava", "model": f"{ORG}/geollava-tiny-lora", "space": f"{ORG}/geollava-demo"}

# The embedded default: sizes chosen so the whole job fits in a few minutes on 2 cores.
SYNTH = {"locations": 2000, "seed": 0, "image_size": 128, "splits": "train,val"}
FRAME_SIZE = 64
FAMILY = "llava-next-video"
# The stand-in for a pretrained vision tower: seconds of training on single synthetic scenes
# (trainer/vision_pretrain.py).
BASE = {"family": FAMILY, "vision_pretrain_steps": 600, "vision_pretrain_images": 3000}
RECIPE = ROOT / "trainer" / "recipes" / "tiny" / "qlora_prune.yaml"


class Stages:
    """Runs numbered stages, timing each and skipping those whose recorded inputs did not change."""

    def __init__(self, total: int, fresh: bool):
        self.total, self.done, self.times = total, 0, {}
        self.state_path = OUT / "stages.json"
        self.state = {} if fresh or not self.state_path.exists() else json.loads(self.state_path.read_text())

    def run(self, name: str, title: str, fn, key: dict | None = None, outputs: tuple[Path, ...] = ()):
        self.done += 1
        fingerprint = hashlib.sha256(json.dumps(key or {}, sort_keys=True, default=str).encode()).hexdigest()
        start = time.perf_counter()
        previous = self.state.get(name) or {}
        reuse = previous.get("fingerprint") == fingerprint and all(p.exists() for p in outputs) and bool(outputs)
        if not reuse:
            fn()
        # A reused stage reports the time it took when it ran.
        seconds = previous["seconds"] if reuse else round(time.perf_counter() - start, 2)
        self.state[name] = {"fingerprint": fingerprint, "seconds": seconds}
        self.state_path.write_text(json.dumps(self.state, indent=2))
        self.times[name] = seconds
        print(
            f"[{self.done}/{self.total}] {title:<58} {'reused' if reuse else 'done':>6} {seconds:7.1f} s", flush=True
        )


def sh(*args: str | Path, env: dict | None = None, log: str | None = None) -> None:
    """Run a console script of this project; on failure show its log and stop."""
    cmd = [str(a) for a in args]
    if not Path(cmd[0]).is_absolute():
        cmd[0] = str(BIN / cmd[0])
    log_path = OUT / "logs" / f"{log or Path(cmd[0]).name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT)
    if proc.returncode != 0:
        tail = log_path.read_text()[-4000:]
        sys.exit(f"\nstage failed: {' '.join(cmd)}\n--- last lines of {log_path} ---\n{tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_hub():
    """Start `geollava-hub` on a free loopback port; yield its URL; stop it."""
    port = free_port()
    storage = OUT / "hub"
    shutil.rmtree(storage, ignore_errors=True)
    log = open(OUT / "logs" / "geollava-hub.log", "w")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [str(BIN / "geollava-hub"), "--host", "127.0.0.1", "--port", str(port), "--storage", str(storage)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/api/whoami-v2", timeout=1)
                break
            time.sleep(0.1)
        else:
            sys.exit("geollava-hub did not start; see outputs/quickstart/logs/geollava-hub.log")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


VERIFY = r"""
import json, sys
import torch
from datasets import load_dataset
from peft import PeftModel
from transformers import AutoModelForImageTextToText
from trainer.masks import apply_masks, load_masks
from huggingface_hub import snapshot_download

repos, local_dataset, local_adapter, base = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
report = {}
for config in ("default", "sample_10k"):
    hub = load_dataset(repos["dataset"], config)
    local = load_dataset(local_dataset, config, download_mode="force_redownload")
    for split in local:
        assert hub[split].features == local[split].features, (config, split)
        assert hub[split]["id"] == local[split]["id"], (config, split)
        assert hub[split]["conversations"] == local[split]["conversations"], (config, split)
    report[config] = {split: hub[split].num_rows for split in hub}
adapter_dir = snapshot_download(repos["model"])
model = AutoModelForImageTextToText.from_pretrained(base)
masks = load_masks(adapter_dir)
if masks:
    apply_masks(model, masks)
model = PeftModel.from_pretrained(model, repos["model"])
ref = AutoModelForImageTextToText.from_pretrained(base)
if masks:
    apply_masks(ref, load_masks(local_adapter))
ref = PeftModel.from_pretrained(ref, local_adapter)
for (name, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
    assert torch.equal(a, b), name
report["adapter_tensors_identical"] = True
report["masks"] = len(masks or {})
print(json.dumps(report))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="start over (delete outputs/quickstart)")
    args = parser.parse_args()
    if args.fresh:
        shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    total_start = time.perf_counter()
    stages = Stages(10, args.fresh)
    fmow, dataset, base = OUT / "fmow", OUT / "dataset", OUT / "base"
    adapter, eval_base, eval_trained = OUT / "adapter", OUT / "eval_base", OUT / "eval_trained"
    cards = OUT / "cards"

    print(
        "GeoLLaVA quickstart: synthetic fMoW -> dataset -> tiny LLaVA-NeXT-Video -> LoRA + pruning -> Hub", flush=True
    )
    stages.run(
        "setup", "set-up: .venv installed (make venv)", lambda: None, {"python": sys.version}, (ROOT / ".venv",)
    )
    stages.run(
        "synth",
        f"geollava-synth: {SYNTH['locations']} synthetic fMoW locations",
        lambda: sh("geollava-synth", "--out", fmow, *_flags(SYNTH)),
        SYNTH,
        (fmow / "groundtruth",),
    )
    build_key = {"synth": SYNTH, "frame_size": FRAME_SIZE}
    stages.run(
        "build",
        "geollava-build: pairs, clips, conversations (synthetic)",
        lambda: sh(
            "geollava-build",
            "--fmow-root",
            fmow,
            "--out",
            dataset,
            "--annotator",
            "synthetic",
            "--frame-size",
            FRAME_SIZE,
            "--sample-size",
            1000,
            "--num-proc",
            2,
        ),
        build_key,
        (dataset / "README.md",),
    )
    stages.run(
        "base",
        "geollava-tiny-model: a tiny base, vision tower pretrained",
        lambda: sh("geollava-tiny-model", "--out", base, *_flags(BASE)),
        BASE,
        (base / "config.json",),
    )
    eval_args = ("--dataset", dataset, "--split", "test", "--batch-size", 16, "--max-new-tokens", 96)
    stages.run(
        "eval_base",
        "geollava-eval: the base model on the test split",
        lambda: sh("geollava-eval", "--model", base, *eval_args, "--out", eval_base, log="eval_base"),
        {**build_key, **BASE},
        (eval_base / "metrics.json",),
    )
    recipe_key = {**build_key, **BASE, "recipe": RECIPE.read_text()}
    stages.run(
        "train",
        "geollava-train: tiny recipe, LoRA/QLoRA + 5 % pruning",
        lambda: sh(
            "geollava-train",
            "--config",
            RECIPE,
            "--model_name_or_path",
            base,
            "--dataset_name",
            dataset,
            "--output_dir",
            adapter,
        ),
        recipe_key,
        (adapter / "adapter_config.json",),
    )
    stages.run(
        "eval_trained",
        "geollava-eval: the trained adapter on the test split",
        lambda: sh(
            "geollava-eval",
            "--model",
            base,
            "--adapter",
            adapter,
            *eval_args,
            "--out",
            eval_trained,
            log="eval_trained",
        ),
        recipe_key,
        (eval_trained / "metrics.json",),
    )

    def render_cards():
        sh("geollava-card", "dataset", dataset, "--repo-id", REPOS["dataset"], log="card_dataset")
        sh(
            "geollava-card",
            "model",
            adapter,
            "--repo-id",
            REPOS["model"],
            "--metrics",
            eval_trained / "metrics.json",
            "--dataset-repo-id",
            REPOS["dataset"],
            log="card_model",
        )
        space = cards / "space"
        shutil.rmtree(space, ignore_errors=True)
        shutil.copytree(ROOT / "spaces_demo", space, ignore=shutil.ignore_patterns("__pycache__"))
        sh(
            "geollava-card",
            "space",
            space,
            "--repo-id",
            REPOS["space"],
            "--model-repo-id",
            REPOS["model"],
            "--dataset-repo-id",
            REPOS["dataset"],
            log="card_space",
        )

    stages.run("cards", "geollava-card: dataset, model and Space cards", render_cards, None, ())

    hub_result = {}

    def push_and_verify():
        with loopback_hub() as url:
            env = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_quickstart_local_token"}
            sh("geollava-push", "dataset", dataset, "--repo-id", REPOS["dataset"], env=env, log="push_dataset")
            sh("geollava-push", "model", adapter, "--repo-id", REPOS["model"], env=env, log="push_model")
            sh("geollava-push", "space", cards / "space", "--repo-id", REPOS["space"], env=env, log="push_space")
            fresh_home = OUT / "fresh_hf_home"
            shutil.rmtree(fresh_home, ignore_errors=True)
            proc = subprocess.run(
                [sys.executable, "-c", VERIFY, json.dumps(REPOS), str(dataset), str(adapter), str(base)],
                env={**os.environ, **env, "HF_HOME": str(fresh_home)},
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            (OUT / "logs" / "verify.log").write_text(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                sys.exit(f"round trip failed:\n{proc.stderr[-4000:]}")
            hub_result.update(json.loads(proc.stdout.strip().splitlines()[-1]))

    stages.run("hub", "geollava-hub + geollava-push, then load back (fresh cache)", push_and_verify, None, ())
    report = write_report(stages, hub_result, time.perf_counter() - total_start)
    stages.run("report", "report: outputs/quickstart/report.md + report.json", lambda: None, None, ())
    print_summary(report)
    return 0


def _flags(options: dict) -> list[str]:
    flags = []
    for key, value in options.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def write_report(stages: Stages, hub: dict, total_seconds: float) -> dict:
    """Write report.json and report.md from the stages' own output files."""
    base_metrics = json.loads((OUT / "eval_base" / "metrics.json").read_text())
    trained_metrics = json.loads((OUT / "eval_trained" / "metrics.json").read_text())
    build = json.loads((OUT / "dataset" / "build_report.json").read_text())
    pruning_path = OUT / "adapter" / "pruning.json"
    pruning = json.loads(pruning_path.read_text()) if pruning_path.exists() else {}
    report = {
        "stage_seconds": stages.times,
        "main_job_seconds": round(total_seconds, 1),
        "rows": build.get("pairs_per_split", {}),
        "metrics": {"base": base_metrics, "trained": trained_metrics},
        "sparsity": pruning.get("sparsity_reached", pruning.get("sparsity")),
        "repos": REPOS,
        "hub_round_trip": hub,
    }
    (OUT / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    keys = ["rougeL", "rouge1", "sentence_bleu2", "bertscore_f1", "grounding_f1", "cider_d", "s_m"]
    lines = [
        "# GeoLLaVA quickstart report",
        "",
        f"Main job: **{report['main_job_seconds']} s** on {os.cpu_count()} cores. Rows: {report['rows']}.",
        f"Sparsity reached: {report['sparsity']}. Repos (loopback Hub): {', '.join(REPOS.values())}.",
        "",
        "| metric | base | trained |",
        "|---|---|---|",
    ]
    for key in keys:
        if key in base_metrics or key in trained_metrics:
            lines.append(f"| {key} | {_fmt(base_metrics.get(key))} | {_fmt(trained_metrics.get(key))} |")
    lines += ["", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds} |" for name, seconds in stages.times.items()]
    (OUT / "report.md").write_text("\n".join(lines) + "\n")
    return report


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "—"


def print_summary(report: dict) -> None:
    base, trained = report["metrics"]["base"], report["metrics"]["trained"]
    print()
    print((OUT / "report.md").read_text())
    print(
        f"ROUGE-L {_fmt(base.get('rougeL'))} -> {_fmt(trained.get('rougeL'))}, "
        f"grounding F1 {_fmt(base.get('grounding_f1'))} -> {_fmt(trained.get('grounding_f1'))}"
    )
    print("\nNext:")
    print("  make demo                      # the Space on this tiny model, in your browser")
    print("  see README.md 'Real fMoW, real models, the real Hub' for the same commands at full scale")


if __name__ == "__main__":
    sys.exit(main())
