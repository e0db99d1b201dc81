"""`make quickstart`: the main job end to end on the embedded default (synthetic fMoW + a tiny LLaVA-NeXT-Video).

    make quickstart            # reuses what is already done and valid; FRESH=1 starts over, LONG=1 the long profile

Every stage runs the project's console scripts as a user would and prints one line with its time; the last pushes
the release to a loopback Hub and loads it back in a fresh process. The profiles are data:
trainer/recipes/quickstart/profiles.yaml. See README.md.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from quickstart_profiles import Profile, load_profiles
from quickstart_report import print_summary, write_report

from dataset_builder.atomic import write_json
from upload.loopback import serve_hub
from upload.roundtrip import RoundTripError, run_in_fresh_process


ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ORG = "geollava-org"
REPOS = {"dataset": f"{ORG}/geollava", "model": f"{ORG}/geollava-tiny-lora", "space": f"{ORG}/geollava-demo"}
#: The output folders of a run's first four stages.
FOLDERS = ("fmow", "dataset", "base", "adapter")


PROFILES = load_profiles()


class Stages:
    """Runs numbered stages, timing each and skipping those whose recorded inputs did not change."""

    def __init__(self, total: int, fresh: bool, out: Path):
        self.total, self.done, self.times = total, 0, {}
        self.state_path = out / "stages.json"
        self.state = {} if fresh or not self.state_path.exists() else json.loads(self.state_path.read_text())

    def run(self, name: str, title: str, fn, key: dict | None = None, outputs: tuple[Path, ...] = ()):
        """Run ``fn`` unless the stage ran before with the same ``key`` and its ``outputs`` still exist."""
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
        write_json(self.state_path, self.state, indent=2)
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


def _flags(options: dict) -> list[str]:
    flags = []
    for key, value in options.items():
        flags += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


@dataclass
class Job:
    """One quickstart run: its profile, its folders, and the keys that decide when a stage is reused."""

    profile: Profile
    out: Path

    def __post_init__(self):
        self.fmow, self.dataset, self.base, self.adapter = (self.out / n for n in FOLDERS)
        self.eval_base, self.eval_trained = self.out / "eval_base", self.out / "eval_trained"
        self.cards, self.logs, self.hub = self.out / "cards", self.out / "logs", self.out / "hub"

    def run(self, *cmd: str | Path, **kwargs) -> None:
        """Run a console script, its log under ``logs/``."""
        sh(*cmd, logs=self.logs, **kwargs)

    @property
    def build_key(self) -> dict:
        """What the dataset depends on."""
        p = self.profile
        key = {"synth": p.synth, "frame_size": p.frame_size, "sample_size": p.sample_size}
        return key if p.config == "default" else {**key, "config": p.config}

    @property
    def config_flags(self) -> dict[str, tuple[str, ...]]:
        """The flags each stage adds for the profile's dataset config (none for the pairs' ``default``)."""
        if self.profile.config == "default":
            return {"build": (), "train": (), "eval": ()}
        config = self.profile.config
        return {"build": ("--sequences",), "train": ("--dataset_config", config), "eval": ("--config", config)}

    @property
    def recipe_key(self) -> dict:
        """What the adapter (and its evaluation) depends on."""
        p = self.profile
        return {
            **self.build_key,
            **p.base,
            "recipe": p.recipe.read_text(),
            "overrides": p.train_overrides,
            "eval": p.eval_options,
        }

    def eval_args(self) -> tuple:
        """The geollava-eval flags both evaluations share."""
        options = _flags(self.profile.eval_options)
        return ("--dataset", self.dataset, *self.config_flags["eval"], "--split", "test", *options)


# --- the stages, in order ------------------------------------------------------------------------------------------


def stage_data(stages: Stages, job: Job) -> None:
    """Set-up check, synthetic fMoW, the dataset."""
    p = job.profile
    stages.run(
        "setup", "set-up: .venv installed (make venv)", lambda: None, {"python": sys.version}, (ROOT / ".venv",)
    )
    stages.run(
        "synth",
        f"geollava-synth: {p.synth['locations']} synthetic fMoW locations",
        lambda: job.run("geollava-synth", "--out", job.fmow, *_flags(p.synth)),
        p.synth,
        (job.fmow / "groundtruth",),
    )
    build = ("geollava-build", "--fmow-root", job.fmow, "--out", job.dataset, "--annotator", "synthetic")
    sizes = ("--frame-size", p.frame_size, "--sample-size", p.sample_size, "--num-proc", 2)
    what = "pairs, clips, conversations" + (" + sequences" if job.config_flags["build"] else "")
    stages.run(
        "build",
        f"geollava-build: {what} (synthetic)",
        lambda: job.run(*build, *sizes, *job.config_flags["build"]),
        job.build_key,
        (job.dataset / "README.md",),
    )


def stage_base(stages: Stages, job: Job) -> None:
    """The tiny base model, then its evaluation."""
    p = job.profile
    stages.run(
        "base",
        "geollava-tiny-model: a tiny base, vision tower pretrained",
        lambda: job.run("geollava-tiny-model", "--out", job.base, *_flags(p.base)),
        p.base,
        (job.base / "config.json",),
    )
    stages.run(
        "eval_base",
        "geollava-eval: the base model on the test split",
        lambda: job.run(
            "geollava-eval", "--model", job.base, *job.eval_args(), "--out", job.eval_base, log="eval_base"
        ),
        {**job.build_key, **p.base, "eval": p.eval_options},
        (job.eval_base / "metrics.json",),
    )


def stage_train(stages: Stages, job: Job) -> None:
    """Training (resumed from its last checkpoint when one exists), then the trained adapter's evaluation."""
    p = job.profile
    train = ("geollava-train", "--config", p.recipe, "--model_name_or_path", job.base, "--dataset_name", job.dataset)
    stages.run(
        "train",
        "geollava-train: tiny recipe, LoRA/QLoRA + 5 % pruning",
        lambda: job.run(
            *train,
            "--output_dir",
            job.adapter,
            *job.config_flags["train"],
            *p.train_overrides,
            # A long run interrupted after a checkpoint goes on from it.
            *(("--resume_from_checkpoint", "true") if any(job.adapter.glob("checkpoint-*")) else ()),
        ),
        job.recipe_key,
        (job.adapter / "adapter_config.json",),
    )
    model = ("geollava-eval", "--model", job.base, "--adapter", job.adapter)
    stages.run(
        "eval_trained",
        "geollava-eval: the trained adapter on the test split",
        lambda: job.run(*model, *job.eval_args(), "--out", job.eval_trained, log="eval_trained"),
        job.recipe_key,
        (job.eval_trained / "metrics.json",),
    )


def render_cards(job: Job) -> None:
    """The dataset, model and Space cards (the Space's under cards/space, beside a copy of spaces_demo/)."""
    job.run("geollava-card", "dataset", job.dataset, "--repo-id", REPOS["dataset"], log="card_dataset")
    metrics = ("--metrics", job.eval_trained / "metrics.json")
    model = ("geollava-card", "model", job.adapter, "--repo-id", REPOS["model"], *metrics)
    job.run(*model, "--dataset-repo-id", REPOS["dataset"], log="card_model")
    space = job.cards / "space"
    shutil.rmtree(space, ignore_errors=True)
    shutil.copytree(ROOT / "spaces_demo", space, ignore=shutil.ignore_patterns("__pycache__"))
    repos = ("--repo-id", REPOS["space"], "--model-repo-id", REPOS["model"], "--dataset-repo-id", REPOS["dataset"])
    job.run("geollava-card", "space", space, *repos, log="card_space")


def push_and_load_back(job: Job) -> dict:
    """Push the three artifacts to a loopback Hub, then load them back in a fresh process; return its report."""
    shutil.rmtree(job.hub, ignore_errors=True)
    with serve_hub(job.hub, log_path=job.logs / "geollava-hub.log") as url:
        env = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_quickstart_local_token"}
        job.run("geollava-push", "dataset", job.dataset, "--repo-id", REPOS["dataset"], env=env, log="push_dataset")
        job.run("geollava-push", "model", job.adapter, "--repo-id", REPOS["model"], env=env, log="push_model")
        space = job.cards / "space"
        job.run("geollava-push", "space", space, "--repo-id", REPOS["space"], env=env, log="push_space")
        fresh_home = job.out / "fresh_hf_home"
        shutil.rmtree(fresh_home, ignore_errors=True)
        try:
            return run_in_fresh_process(
                REPOS,
                job.dataset,
                job.adapter,
                job.base,
                env=env,
                hf_home=fresh_home,
                log_path=job.logs / "verify.log",
            )
        except RoundTripError as err:
            sys.exit(str(err))


def stage_release(stages: Stages, job: Job) -> dict:
    """Cards, then the Hub round trip; returns the round trip's report."""
    stages.run("cards", "geollava-card: dataset, model and Space cards", lambda: render_cards(job), None, ())
    hub_result: dict = {}
    stages.run(
        "hub",
        "geollava-hub + geollava-push, then load back (fresh cache)",
        lambda: hub_result.update(push_and_load_back(job)),
        None,
        (),
    )
    return hub_result


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (as the README shows it), else absolute."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: --fresh, --profile, --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="start over (delete the output folder)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default", help="what to build and train")
    parser.add_argument("--out", type=Path, help="output folder (default: the profile's, under outputs/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the stages in order, then write and print the report."""
    args = parse_args(argv)
    profile = PROFILES[args.profile]
    job = Job(profile, (args.out or profile.out).resolve())
    if args.fresh:
        shutil.rmtree(job.out, ignore_errors=True)
    job.out.mkdir(parents=True, exist_ok=True)
    total_start = time.perf_counter()
    stages = Stages(10, args.fresh, job.out)
    print(
        "GeoLLaVA quickstart: synthetic fMoW -> dataset -> tiny LLaVA-NeXT-Video -> LoRA + pruning -> Hub"
        + ("" if args.profile == "default" else f" ({args.profile} profile)"),
        flush=True,
    )
    stage_data(stages, job)
    stage_base(stages, job)
    stage_train(stages, job)
    hub_result = stage_release(stages, job)
    report = write_report(
        job.out, args.profile, profile.bars, stages.times, hub_result, time.perf_counter() - total_start, REPOS
    )
    stages.run("report", f"report: {_shown(job.out / 'report.md')} + report.json", lambda: None, None, ())
    demo = f"BASE_MODEL_ID={_shown(job.base)} ADAPTER_ID={_shown(job.adapter)} make demo"
    if job.out == PROFILES["default"].out:
        demo = "make demo                      # the Space on this tiny model, in your browser"
    print_summary(job.out, report, demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
