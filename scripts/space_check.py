"""`make space-check`: the Space, pushed to a loopback Hub and pulled back, runs on its own requirements alone.

    python scripts/space_check.py [--keep] [--venv DIR]

A tiny base and adapter pushed as model repos; the Space pushed, pulled into an empty folder and installed in a fresh
venv from its requirements.txt alone; ``python app.py`` there, and one pair's answer compared with
``geollava-predict``. Minutes (the venv install): not part of `make test`. See docs/space.md "make space-check".
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from upload.loopback import free_port, serve_hub, wait_until_up


ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "outputs" / "space_check"
RESULTS = ROOT / "benchmarks" / "results"
QUICKSTART = ROOT / "outputs" / "quickstart"
ORG = "geo-org"
REPOS = {"base": f"{ORG}/space-check-base", "adapter": f"{ORG}/space-check-lora", "space": f"{ORG}/space-check-demo"}
PORT = free_port()
WORK = Path(tempfile.mkdtemp(prefix="geollava-space-check-"))  # outside the checkout, on purpose
os.environ.update(
    HF_ENDPOINT=f"http://127.0.0.1:{PORT}",  # read by huggingface_hub when it is imported: set before the imports
    HF_HOME=str(WORK / "hf_home_pusher"),
    HF_HUB_DISABLE_XET="1",
    HF_TOKEN="hf_space_check_local_token",
    HF_HUB_DISABLE_TELEMETRY="1",
    GRADIO_ANALYTICS_ENABLED="False",
)

from gradio_client import Client, handle_file  # noqa: E402
from huggingface_hub import HfApi, snapshot_download  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForImageTextToText  # noqa: E402

from dataset_builder.atomic import write_json, write_text  # noqa: E402
from dataset_builder.prompts import PROMPT_TEMPLATES  # noqa: E402
from trainer.models.families import get_family  # noqa: E402
from trainer.pruning.masks import apply_masks, save_masks  # noqa: E402
from trainer.tiny.build import build_tiny_model  # noqa: E402


#: What the Space must never install: the training, data and annotation stack.
TRAINING_STACK = ("datasets", "trl", "bitsandbytes", "openai", "pyarrow", "evaluate", "deepspeed")
PROJECT_PACKAGES = ("dataset_builder", "trainer", "model_cards", "upload", "spaces_demo")
SHIPPED = ("dataset_builder", "trainer")
MAX_NEW_TOKENS = 32
PROBE = """
import importlib.util, json, sys
found = {n: getattr(importlib.util.find_spec(n), "origin", None) for n in sys.argv[1].split(",")}
print(json.dumps({"sys_path": sys.path, "found": found}))
"""


class Timer:
    """Seconds per stage, in order."""

    def __init__(self):
        self.stages = {}

    def __call__(self, name, fn, *args, **kwargs):
        print(f"[space-check] {name} ...", flush=True)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.stages[name] = round(time.perf_counter() - start, 1)
        print(f"[space-check] {name}: {self.stages[name]} s", flush=True)
        return result


def run(cmd, log_name, **kwargs):
    """Run ``cmd``, its output in ``outputs/space_check/<log_name>.log``; exit naming the log if it fails."""
    log = LOGS / f"{log_name}.log"
    with open(log, "w") as out:
        proc = subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        sys.exit(f"[space-check] FAILED: {' '.join(map(str, cmd[:3]))} ... exited {proc.returncode} ({log}):\n{tail}")
    return log


def tiny_model(work: Path) -> tuple[Path, Path]:
    """The quickstart's base and adapter when present, else a tiny base + untrained LoRA with magnitude masks."""
    if (QUICKSTART / "base" / "config.json").is_file() and (QUICKSTART / "adapter" / "adapter_config.json").is_file():
        return QUICKSTART / "base", QUICKSTART / "adapter"
    base = build_tiny_model("llava-next-video", work / "base", image_size=32, corpus=list(PROMPT_TEMPLATES))
    model = AutoModelForImageTextToText.from_pretrained(base)
    weight = model.model.language_model.layers[0].mlp.down_proj.weight
    masks = {"model.language_model.layers.0.mlp.down_proj": weight.abs() > weight.abs().median()}
    apply_masks(model, masks)
    lora = LoraConfig(r=4, target_modules=get_family("llava-next-video").lora_target_modules, init_lora_weights=False)
    adapter = work / "adapter"
    get_peft_model(model, lora).save_pretrained(adapter)
    save_masks(masks, adapter, {"method": "magnitude", "target_sparsity": 0.5})
    return base, adapter


def push_all(base: Path, adapter: Path) -> None:
    """Base (as a plain model repo), adapter and Space through the loopback Hub, the last two with geollava-push."""
    api = HfApi()
    api.create_repo(REPOS["base"], exist_ok=True)
    api.upload_folder(folder_path=str(base), repo_id=REPOS["base"])
    bin_dir = Path(sys.executable).parent
    run([bin_dir / "geollava-push", "model", adapter, "--repo-id", REPOS["adapter"]], "push_adapter", cwd=ROOT)
    space = ["--repo-id", REPOS["space"], "--model-repo-id", REPOS["adapter"], "--base-model", REPOS["base"]]
    extra = ["--dataset-repo-id", f"{ORG}/geollava", "--hardware", "cpu-basic"]
    run([bin_dir / "geollava-push", "space", ROOT / "spaces_demo", *space, *extra], "push_space", cwd=ROOT)


def pull(work: Path) -> Path:
    """The Space repo downloaded into an empty folder, with its card and settings checked."""
    pulled = work / "pulled"
    pulled.mkdir()
    snapshot_download(REPOS["space"], repo_type="space", local_dir=str(pulled))
    shutil.rmtree(pulled / ".cache", ignore_errors=True)  # snapshot_download's own bookkeeping, not the repo's
    info = HfApi().space_info(REPOS["space"])
    card = info.card_data
    expect(info.sdk == "gradio", f"sdk {info.sdk!r}")
    expect(card.get("models") == [REPOS["adapter"], REPOS["base"]], f"card models {card.get('models')}")
    expect(card.get("datasets") == [f"{ORG}/geollava"], f"card datasets {card.get('datasets')}")
    expect(card.get("suggested_hardware") == "cpu-basic", f"suggested_hardware {card.get('suggested_hardware')}")
    settings = json.loads((pulled / "space_config.json").read_text())
    expect(settings["adapter"] == REPOS["adapter"] and settings["base_model"] == REPOS["base"], f"{settings}")
    requirements = [r for r in (pulled / "requirements.txt").read_text().splitlines() if r and r[0] != "#"]
    names = {Requirement(r).name for r in requirements}
    expect(not names & {*TRAINING_STACK, "geollava"}, f"requirements {sorted(names)}")
    return pulled


def expect(ok: bool, what: str) -> None:
    if not ok:
        sys.exit(f"[space-check] FAILED: {what}")


def clean_env(venv: Path, home: Path) -> dict:
    """An environment with nothing of this checkout in it: the venv first on PATH, no PYTHONPATH, a fresh HF_HOME."""
    keep = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
    path = os.pathsep.join([str(venv / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    hub = {k: os.environ[k] for k in ("HF_ENDPOINT", "HF_HUB_DISABLE_XET", "HF_TOKEN", "HF_HUB_DISABLE_TELEMETRY")}
    return keep | hub | {"PATH": path, "PYTHONPATH": "", "PYTHONNOUSERSITE": "1", "HF_HOME": str(home)}


def make_venv(pulled: Path, venv: Path) -> None:
    """A virtual environment from the pulled requirements.txt alone (reused only when ``--venv`` names one whose
    requirements are the same)."""
    requirements = (pulled / "requirements.txt").read_bytes()
    stamp = venv / f".space-check-{hashlib.sha256(requirements).hexdigest()[:16]}"
    if stamp.exists():
        print(f"[space-check] reusing {venv} (same requirements)")
        return
    shutil.rmtree(venv, ignore_errors=True)
    base_python = getattr(sys, "_base_executable", sys.executable)  # the interpreter, not this project's venv
    run([base_python, "-m", "venv", venv], "venv_create")
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check"]
    run([*pip, "-r", pulled / "requirements.txt"], "venv_install", cwd=pulled)
    stamp.touch()


def check_isolation(venv: Path, pulled: Path, env: dict, outside: Path) -> None:
    """Outside the pulled folder no project package imports; inside it only the shipped copies do."""
    names = ",".join(PROJECT_PACKAGES + TRAINING_STACK)
    python = str(venv / "bin" / "python")
    for cwd in (outside, pulled):
        out = subprocess.run([python, "-c", PROBE, names], cwd=cwd, env=env, capture_output=True, text=True)
        expect(out.returncode == 0, f"probe in {cwd}: {out.stderr[-2000:]}")
        probe = json.loads(out.stdout)
        found = {k: v for k, v in probe["found"].items() if v}
        paths = [Path(p or cwd).resolve() for p in probe["sys_path"]]
        leaks = [p for p in paths if p.is_relative_to(ROOT) and not p.is_relative_to(venv.resolve())]
        expect(not leaks, f"sys.path holds this checkout: {leaks}")
        if cwd == outside:
            expect(not found, f"importable in the fresh venv, outside the Space: {found}")
        else:
            expect(set(found) == set(SHIPPED), f"importable inside the Space: {found} (expected {SHIPPED})")
            expect(all(Path(v).resolve().is_relative_to(pulled) for v in found.values()), f"not the copies: {found}")
    print(f"[space-check] isolation: outside the Space nothing of {PROJECT_PACKAGES} or {TRAINING_STACK} imports")


def ask_space(venv: Path, pulled: Path, env: dict, before: Path, after: Path) -> str:
    """Start the pulled app in the venv (cwd = the pulled folder) and ask it one pair through gradio_client."""
    port = free_port()
    env = env | {
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log_path = LOGS / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "python"), "app.py"], cwd=pulled, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            start = time.perf_counter()
            wait_until_up(url, proc, log_path, timeout_s=600)
            print(f"[space-check] the app answers HTTP after {time.perf_counter() - start:.1f} s")
            client = Client(url, verbose=False)
            text, _, status = client.predict(
                handle_file(str(before)),
                handle_file(str(after)),
                None,
                None,
                None,
                PROMPT_TEMPLATES[0],
                MAX_NEW_TOKENS,
                api_name="/describe",
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    expect(status.startswith("✅"), f"the Space said: {status} (log {log_path})")
    return text


def predict_cli(before: Path, after: Path, home: Path) -> str:
    """``geollava-predict`` on the same Hub repos, in this project's venv."""
    cmd = [Path(sys.executable).parent / "geollava-predict", "--model", REPOS["base"], "--adapter", REPOS["adapter"]]
    cmd += ["--prompt-template", "0", "--max-new-tokens", str(MAX_NEW_TOKENS), before, after]
    env = os.environ | {"HF_HOME": str(home)}
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, cwd=ROOT)
    (LOGS / "predict.log").write_text(proc.stdout + proc.stderr)
    expect(proc.returncode == 0, f"geollava-predict failed: {proc.stderr[-2000:]}")
    return proc.stdout.strip()


def write_results(timer: Timer, extra: dict, model_source: str) -> None:
    total = round(sum(timer.stages.values()), 1)
    data = {"stages_s": timer.stages, "total_s": total, "model": model_source, **extra}
    data["machine"] = f"{os.cpu_count()} CPU cores (shared), Python {sys.version.split()[0]}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "space_check.json", data)
    rows = "\n".join(f"| {k} | {v} |" for k, v in timer.stages.items())
    write_text(
        RESULTS / "space_check.md",
        "# make space-check\n\nThe Space pushed to the loopback Hub, pulled into an empty folder, installed into a "
        "fresh venv from its requirements.txt alone, started with no project checkout on the path, asked one pair "
        f"through gradio_client; same text as geollava-predict. Model: {model_source}. {data['machine']}; wall time "
        f"{data['wall_s']} s; the venv holds {data['venv_mb']:,} MB (torch's CUDA libraries: most of it).\n\n"
        f"| stage | seconds |\n|---|---|\n{rows}\n| **total** | **{total}** |\n",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="Keep the work folder (venv, pulled Space, models).")
    parser.add_argument("--venv", type=Path, help="Build the venv here; reused when its requirements are the same.")
    args = parser.parse_args(argv)
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    work, started = WORK, time.perf_counter()
    timer = Timer()
    try:
        with serve_hub(work / "hub", port=PORT, log_path=LOGS / "geollava-hub.log"):
            base, adapter = timer("model", tiny_model, work)
            timer("push", push_all, base, adapter)
            pulled = timer("pull", pull, work)
            venv = args.venv.resolve() if args.venv else work / "venv"
            timer("venv", make_venv, pulled, venv)
            venv_mb = round(sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6)
            env = clean_env(venv, work / "hf_home_space")
            (work / "elsewhere").mkdir()
            timer("isolation", check_isolation, venv, pulled, env, work / "elsewhere")
            before = sorted((pulled / "examples").glob("*_before.jpg"))[0]
            after = before.with_name(before.name.replace("_before", "_after"))
            space_text = timer("space", ask_space, venv, pulled, env, before, after)
            cli_text = timer("predict", predict_cli, before, after, work / "hf_home_predict")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    expect(bool(space_text), "the Space answered an empty text")
    expect(space_text.strip() == cli_text, f"the Space said {space_text!r}, geollava-predict said {cli_text!r}")
    source = "the quickstart's" if base == QUICKSTART / "base" else "tiny LLaVA-NeXT-Video + untrained LoRA"
    wall = round(time.perf_counter() - started, 1)
    write_results(
        timer, {"space_text": space_text, "predict_text": cli_text, "wall_s": wall, "venv_mb": venv_mb}, source
    )
    print(f"[space-check] OK: the pulled Space and geollava-predict both said {space_text!r}")
    print(f"[space-check] timings: {timer.stages} -> {RESULTS / 'space_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
