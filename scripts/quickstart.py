"""`make quickstart`: the main job end to end on the embedded default (synthetic fMoW + a tiny LLaVA-NeXT-Video).

    make quickstart            # reuses what is already done and valid
    make quickstart FRESH=1    # starts over
    make quickstart LONG=1     # the long profile: a deeper tiny model trained ~20 minutes (outputs/quickstart-long/)
    make quickstart PROFILE=long-simple   # the long profile on simpler scenes (one change or none per pair)

Every stage runs the project's console scripts as a user would, prints one line with its time, and leaves its output
under outputs/quickstart/. The last stage pushes the dataset, the adapter and the Space to a loopback Hub
(`geollava-hub`, a stand-in for huggingface.co) and loads them back in a fresh process with an empty cache.
`--profile ci` runs the same chain at test size (the test suite runs it).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from dataset_builder.atomic import write_json, write_text
from upload.loopback import serve_hub


ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ORG = "geollava-org"
REPOS = {"dataset": f"{ORG}/geollava", "model": f"{ORG}/geollava-tiny-lora", "space": f"{ORG}/geollava-demo"}
FAMILY = "llava-next-video"
RECIPES = ROOT / "trainer" / "recipes" / "tiny"


@dataclass(frozen=True)
class Profile:
    """What one quickstart run builds and trains; every stage's options come from here."""

    out: Path
    synth: dict
    frame_size: int
    base: dict
    recipe: Path
    train_overrides: tuple[str, ...] = ()
    sample_size: int = 1000
    eval_options: dict = field(default_factory=lambda: {"batch_size": 16, "max_new_tokens": 96})


# The embedded default: sizes chosen so the whole job fits in a few minutes on 2 cores. The base's vision tower gets
# the stand-in for a pretrained one: seconds of training on single synthetic scenes (trainer/tiny/vision_pretrain.py).
DEFAULT = Profile(
    out=ROOT / "outputs" / "quickstart",
    synth={"locations": 2000, "seed": 0, "image_size": 128, "splits": "train,val"},
    frame_size=64,
    base={"family": FAMILY, "vision_pretrain_steps": 600, "vision_pretrain_images": 3000},
    recipe=RECIPES / "qlora_prune.yaml",
)
# The same data; a 6-layer language model with a large RoPE base, trained ~8x longer: what naming the change kinds
# takes (docs/training.md, "A third round").
LONG = Profile(
    out=ROOT / "outputs" / "quickstart-long",
    synth=DEFAULT.synth,
    frame_size=DEFAULT.frame_size,
    base={**DEFAULT.base, "num_layers": 6, "vision_layers": 2, "rope_theta": 1e6},
    recipe=RECIPES / "lora_prune_deep.yaml",
)
SIMPLE_SYNTH = {**DEFAULT.synth, "locations": 3100, "two_dates": True}
PROFILES = {
    "default": DEFAULT,
    "long": LONG,
    # Simpler scenes: two dates a location, so every pair has one change or none (about as many pairs as the
    # default's); with the default model and with the long profile's (docs/training.md, "Simpler scenes").
    "simple": replace(DEFAULT, out=ROOT / "outputs" / "quickstart-simple", synth=SIMPLE_SYNTH),
    "long-simple": replace(LONG, out=ROOT / "outputs" / "quickstart-long-simple", synth=SIMPLE_SYNTH),
    # The whole chain at test size, for the test suite: every artifact and round trip, no quality.
    "ci": Profile(
        out=ROOT / "outputs" / "quickstart-ci",
        synth={"locations": 24, "seed": 0, "image_size": 64, "splits": "train,val", "oversize_fraction": 0},
        frame_size=32,
        base={"family": FAMILY, "image_size": 32, "vision_pretrain_steps": 5, "vision_pretrain_images": 20},
        recipe=RECIPES / "qlora_prune.yaml",
        train_overrides=("--max_steps", "6", "--dataloader_num_workers", "0", "--disable_tqdm", "true"),
        sample_size=5,
        eval_options={"batch_size": 8, "max_new_tokens": 8, "meteor": "false", "model_metrics": "false"},
    ),
}


class Stages:
    """Runs numbered stages, timing each and skipping those whose recorded inputs did not change."""

    def __init__(self, total: int, fresh: bool, out: Path):
        self.total, self.done, self.times = total, 0, {}
        self.state_path = out / "stages.json"
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


def sh(*args: str | Path, logs: Path, env: dict | None = None, log: str | None = None) -> None:
    """Run a console script of this project, its output into ``logs``; on failure show its log and stop."""
    cmd = [str(a) for a in args]
    if not Path(cmd[0]).is_absolute():
        cmd[0] = str(BIN / cmd[0])
    log_path = logs / f"{log or Path(cmd[0]).name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT)
    if proc.returncode != 0:
        tail = log_path.read_text()[-4000:]
        sys.exit(f"\nstage failed: {' '.join(cmd)}\n--- last lines of {log_path} ---\n{tail}")


VERIFY = r"""
import json, sys
import torch
from datasets import load_dataset
from peft import PeftModel
from transformers import AutoModelForImageTextToText
from dataset_builder.atomic import write_json, write_text
from upload.loopback import serve_hub
from trainer.models.masks import apply_masks, load_masks
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="start over (delete the output folder)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default", help="what to build and train")
    parser.add_argument("--out", type=Path, help="output folder (default: the profile's, under outputs/)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    out = (args.out or profile.out).resolve()
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    total_start = time.perf_counter()
    stages = Stages(10, args.fresh, out)
    fmow, dataset, base = out / "fmow", out / "dataset", out / "base"
    adapter, eval_base, eval_trained = out / "adapter", out / "eval_base", out / "eval_trained"
    cards = out / "cards"

    def run(*cmd: str | Path, **kwargs) -> None:
        sh(*cmd, logs=logs, **kwargs)

    print(
        "GeoLLaVA quickstart: synthetic fMoW -> dataset -> tiny LLaVA-NeXT-Video -> LoRA + pruning -> Hub"
        + ("" if args.profile == "default" else f" ({args.profile} profile)"),
        flush=True,
    )
    stages.run(
        "setup", "set-up: .venv installed (make venv)", lambda: None, {"python": sys.version}, (ROOT / ".venv",)
    )
    stages.run(
        "synth",
        f"geollava-synth: {profile.synth['locations']} synthetic fMoW locations",
        lambda: run("geollava-synth", "--out", fmow, *_flags(profile.synth)),
        profile.synth,
        (fmow / "groundtruth",),
    )
    build_key = {"synth": profile.synth, "frame_size": profile.frame_size, "sample_size": profile.sample_size}
    stages.run(
        "build",
        "geollava-build: pairs, clips, conversations (synthetic)",
        lambda: run(
            "geollava-build",
            "--fmow-root",
            fmow,
            "--out",
            dataset,
            "--annotator",
            "synthetic",
            "--frame-size",
            profile.frame_size,
            "--sample-size",
            profile.sample_size,
            "--num-proc",
            2,
        ),
        build_key,
        (dataset / "README.md",),
    )
    stages.run(
        "base",
        "geollava-tiny-model: a tiny base, vision tower pretrained",
        lambda: run("geollava-tiny-model", "--out", base, *_flags(profile.base)),
        profile.base,
        (base / "config.json",),
    )
    eval_args = ("--dataset", dataset, "--split", "test", *_flags(profile.eval_options))
    stages.run(
        "eval_base",
        "geollava-eval: the base model on the test split",
        lambda: run("geollava-eval", "--model", base, *eval_args, "--out", eval_base, log="eval_base"),
        {**build_key, **profile.base, "eval": profile.eval_options},
        (eval_base / "metrics.json",),
    )
    recipe_key = {
        **build_key,
        **profile.base,
        "recipe": profile.recipe.read_text(),
        "overrides": profile.train_overrides,
        "eval": profile.eval_options,
    }
    stages.run(
        "train",
        "geollava-train: tiny recipe, LoRA/QLoRA + 5 % pruning",
        lambda: run(
            "geollava-train",
            "--config",
            profile.recipe,
            "--model_name_or_path",
            base,
            "--dataset_name",
            dataset,
            "--output_dir",
            adapter,
            *profile.train_overrides,
            # A long run interrupted after a checkpoint goes on from it.
            *(("--resume_from_checkpoint", "true") if any(adapter.glob("checkpoint-*")) else ()),
        ),
        recipe_key,
        (adapter / "adapter_config.json",),
    )
    stages.run(
        "eval_trained",
        "geollava-eval: the trained adapter on the test split",
        lambda: run(
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
        run("geollava-card", "dataset", dataset, "--repo-id", REPOS["dataset"], log="card_dataset")
        run(
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
        run(
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
        shutil.rmtree(out / "hub", ignore_errors=True)
        with serve_hub(out / "hub", log_path=logs / "geollava-hub.log") as url:
            env = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_quickstart_local_token"}
            run("geollava-push", "dataset", dataset, "--repo-id", REPOS["dataset"], env=env, log="push_dataset")
            run("geollava-push", "model", adapter, "--repo-id", REPOS["model"], env=env, log="push_model")
            run("geollava-push", "space", cards / "space", "--repo-id", REPOS["space"], env=env, log="push_space")
            fresh_home = out / "fresh_hf_home"
            shutil.rmtree(fresh_home, ignore_errors=True)
            proc = subprocess.run(
                [sys.executable, "-c", VERIFY, json.dumps(REPOS), str(dataset), str(adapter), str(base)],
                env={**os.environ, **env, "HF_HOME": str(fresh_home)},
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            (logs / "verify.log").write_text(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                sys.exit(f"round trip failed:\n{proc.stderr[-4000:]}")
            hub_result.update(json.loads(proc.stdout.strip().splitlines()[-1]))

    stages.run("hub", "geollava-hub + geollava-push, then load back (fresh cache)", push_and_verify, None, ())
    report = write_report(out, args.profile, stages, hub_result, time.perf_counter() - total_start)
    stages.run("report", f"report: {_shown(out / 'report.md')} + report.json", lambda: None, None, ())
    print_summary(out, report)
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (as the README shows it), else absolute."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _flags(options: dict) -> list[str]:
    flags = []
    for key, value in options.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def write_report(out: Path, profile: str, stages: Stages, hub: dict, total_seconds: float) -> dict:
    """Write report.json and report.md from the stages' own output files."""
    base_metrics = json.loads((out / "eval_base" / "metrics.json").read_text())
    trained_metrics = json.loads((out / "eval_trained" / "metrics.json").read_text())
    build = json.loads((out / "dataset" / "build_report.json").read_text())
    pruning_path = out / "adapter" / "pruning.json"
    pruning = json.loads(pruning_path.read_text()) if pruning_path.exists() else {}
    report = {
        "profile": profile,
        "stage_seconds": stages.times,
        "main_job_seconds": round(total_seconds, 1),
        "rows": build.get("pairs_per_split", {}),
        "metrics": {"base": base_metrics, "trained": trained_metrics},
        "sparsity": pruning.get("sparsity_reached", pruning.get("sparsity")),
        "repos": REPOS,
        "hub_round_trip": hub,
    }
    write_json(out / "report.json", report, indent=2)
    keys = ["rougeL", "rouge1", "sentence_bleu2", "bertscore_f1", "grounding_f1", "cider_d", "s_m"]
    lines = [
        "# GeoLLaVA quickstart report" + ("" if profile == "default" else f" ({profile} profile)"),
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
    write_text(out / "report.md", "\n".join(lines) + "\n")
    return report


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "—"


def print_summary(out: Path, report: dict) -> None:
    base, trained = report["metrics"]["base"], report["metrics"]["trained"]
    print()
    print((out / "report.md").read_text())
    print(
        f"ROUGE-L {_fmt(base.get('rougeL'))} -> {_fmt(trained.get('rougeL'))}, "
        f"grounding F1 {_fmt(base.get('grounding_f1'))} -> {_fmt(trained.get('grounding_f1'))}"
    )
    print("\nNext:")
    if out == DEFAULT.out:
        print("  make demo                      # the Space on this tiny model, in your browser")
    else:
        print(f"  BASE_MODEL_ID={_shown(out / 'base')} ADAPTER_ID={_shown(out / 'adapter')} make demo")
    print("  see README.md 'Real fMoW, real models, the real Hub' for the same commands at full scale")


if __name__ == "__main__":
    sys.exit(main())
