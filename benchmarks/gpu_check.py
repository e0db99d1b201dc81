"""``make gpu-check``: the GPU check, step by step, each step in its own try with its own log.

    make gpu-check                                                         # the project's venv, on a CUDA machine
    make gpu-check PYTHON=/opt/torch/.venv/bin/python3 WHEELS=.gpu-wheels  # an offline node with its own PyTorch
    .venv/bin/python benchmarks/gpu_check.py --dry_run true --out_dir /tmp/c  # the same steps on the CPU (make test)

A preflight, ``pytest -m gpu``, the tiny chain on CUDA, then the 7B training benchmark, which runs whatever the chain
gave. benchmarks/results/gpu_chain.{json,md} are rewritten after every step; the exit status is the number of failed
steps. See docs/gpu-check.md.
"""

import contextlib
import gc
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # gpu_wheels and results_io beside this file; the project from a checkout

import gpu_wheels  # noqa: E402
from results_io import RESULTS, write_results  # noqa: E402


#: After what stops CUDA (an old driver, no device, a CPU-only torch), said first.
NO_CUDA = "`make gpu-check` needs an NVIDIA GPU that this torch can use; nothing was run"
#: The oldest driver each CUDA major runs on (NVIDIA's minor-version compatibility: every 12.x on >= 525, ...).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
#: The packages whose versions the results record.
VERSIONS = ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "huggingface-hub")
logger = logging.getLogger("gpu_check")


@dataclass
class GpuCheckConfig:
    """Options of the GPU check."""

    dry_run: bool = field(default=False, metadata={"help": "Run the steps on the CPU, smaller, no GPU parts."})
    train_steps: int = field(default=40, metadata={"help": "Optimizer steps of the tiny QLoRA + pruning run."})
    eval_rows: int = field(default=32, metadata={"help": "Test rows generated and scored."})
    tiny_recipe: str = field(
        default="trainer/recipes/tiny/qlora_prune.yaml", metadata={"help": "The tiny chain's training recipe."}
    )
    time_budget: int = field(
        default=450, metadata={"help": "Seconds for the whole check: the 7B benchmark gets what is left of them."}
    )
    gpu_train_timeout: int = field(
        default=480, metadata={"help": "Seconds allowed to benchmarks/gpu_train.py (at most what the budget leaves)."}
    )
    steps: str = field(default="", metadata={"help": "Only these steps, comma-separated keys ('': all)."})
    out_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where gpu_chain.{json,md} and gpu_logs/ go (default: benchmarks/results; dry run: nowhere)."
        },
    )
    work_dir: str | None = field(
        default=None, metadata={"help": "Temporary files, the 7B base among them (~14 GB); removed at the end."}
    )
    installed: str = field(
        default=str(gpu_wheels.NODE_PACKAGES), metadata={"help": "The node's package list the wheelhouse is for."}
    )
    wheels: str | None = field(
        default=None,
        metadata={
            "help": "The wheelhouse installed for this run (default: what benchmarks/results/gpu_wheels.json lists)."
        },
    )

    def __post_init__(self):
        for name in ("train_steps", "eval_rows", "time_budget", "gpu_train_timeout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)!r}: must be >= 1")

    @property
    def step_keys(self) -> list[str]:
        """The steps asked for (empty: all)."""
        return [key.strip() for key in self.steps.split(",") if key.strip()]


# ---- the runner ----------------------------------------------------------------------------------------------------


class StepSkipped(Exception):  # noqa: N818 - a step's outcome, not an error
    """A step cannot run here (a missing optional part); the message says why. Not a failure."""


class CheckFailed(Exception):
    """A step ran but what it checked is wrong; carries what it measured."""

    def __init__(self, message: str, checks: dict):
        super().__init__(message)
        self.checks = checks


class StepTimeout(BaseException):
    """A step ran past its time limit (a BaseException: library code catching Exception must not swallow it)."""


@dataclass(frozen=True)
class Step:
    """One step of the check: a named callable taking the :class:`Chain` and returning what it checked.

    Attributes:
        key: Short name: the log file's, ``--steps``' and ``needs``'.
        name: What the results table shows.
        run: The callable; it raises to fail (:class:`CheckFailed` keeps its checks), :class:`StepSkipped` to skip.
        needs: Keys of the steps that must have passed first; otherwise this one is skipped.
        timeout_s: Seconds before it is stopped (``None``: no limit; a subprocess step keeps its own).
    """

    key: str
    name: str
    run: Callable[["Chain"], dict]
    needs: tuple[str, ...] = ()
    timeout_s: float | None = None


@dataclass
class Chain:
    """What the steps share: the options, the device, a work folder, and what each step that passed returned."""

    check: GpuCheckConfig
    device: str
    root: Path
    results_dir: Path | None
    cuda: dict
    started: float = field(default_factory=time.perf_counter)
    outputs: dict[str, dict] = field(default_factory=dict)

    def time_left(self) -> float:
        """Seconds left of the check's budget."""
        return self.check.time_budget - (time.perf_counter() - self.started)


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`StepTimeout` in this (main) thread after ``seconds``; no limit for ``None``."""
    if not seconds:
        yield
        return

    def expire(signum, frame):
        raise StepTimeout(f"ran past its limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class StepLog:
    """Where each step's output goes: its stdout, stderr and every log record, into one file per step."""

    def __init__(self, folder: Path):
        import transformers

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.log"):  # a previous run's: the folder holds this run's logs only
            stale.unlink()
        self.handler = logging.StreamHandler(sys.__stderr__)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        self.level = root.level
        root.addHandler(self.handler)  # the CLIs' basicConfig is a no-op from now on: their logs come here
        root.setLevel(logging.INFO)
        self.transformers_logging = transformers.utils.logging
        self.transformers_logging.disable_default_handler()  # it holds the stderr of transformers' import
        self.transformers_logging.enable_propagation()

    @contextlib.contextmanager
    def capture(self, name: str) -> Iterator[Path]:
        """Send everything to ``folder/name.log`` while the block runs, what child processes write (Java) too."""
        path = self.folder / f"{name}.log"
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(path, "w", encoding="utf-8", buffering=1) as sink:
            previous = self.handler.setStream(sink)
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                    yield path
            finally:
                sink.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)
                self.handler.setStream(previous)

    def close(self) -> None:
        """Stop collecting the records; logging as it was before."""
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self.level)
        self.transformers_logging.disable_propagation()
        self.transformers_logging.enable_default_handler()


def _free_gpu_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_steps(steps: list[Step], chain: Chain, header: dict, log_dir: Path, console=None) -> dict:
    """Run ``steps`` in order, each in its own try and log; the results are saved before and after every step.

    A step whose ``needs`` did not pass is skipped; every other step runs whatever happened before it.

    Args:
        steps: The steps.
        chain: What they share.
        header: The results' first keys (device, versions, ...).
        log_dir: Where ``NN-key.log`` go.
        console: Where one line per step is printed (default: this process's stdout).

    Returns:
        The results: ``header``, ``steps`` (``name``, ``key``, ``status``, ``ok``, ``seconds``, ``checks``,
        ``error``, ``traceback``, ``reason``, ``log``), ``failed``, ``ok``, ``total_seconds``.
    """
    console = console or sys.stdout
    entries = [{"key": s.key, "name": s.name, "status": "pending", "ok": False} for s in steps]
    result = {**header, "steps": entries, "failed": 0, "ok": False, "total_seconds": 0.0}
    status = {}

    def save() -> None:
        result["failed"] = sum(e["status"] == "failed" for e in entries)
        result["ok"] = result["failed"] == 0 and all(e["status"] in ("ok", "skipped") for e in entries)
        result["total_seconds"] = round(time.perf_counter() - chain.started, 1)
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if chain.results_dir is not None:
            write_results("gpu_chain", result, render(result), chain.results_dir)

    logs = StepLog(log_dir)
    try:
        for i, (step, entry) in enumerate(zip(steps, entries, strict=True)):
            missing = [key for key in step.needs if status.get(key) != "ok"]
            if missing:
                entry.update(status="skipped", reason=f"needs {', '.join(missing)}, which did not pass")
            else:
                entry["status"] = "running"
                save()
                began = time.perf_counter()
                with logs.capture(f"{i:02d}-{step.key}") as log_path:
                    inside = chain.results_dir is not None and log_path.is_relative_to(chain.results_dir)
                    entry["log"] = str(log_path.relative_to(chain.results_dir) if inside else log_path)
                    try:
                        with time_limit(step.timeout_s):
                            checks = step.run(chain)
                        entry.update(status="ok", ok=True, checks=checks)
                        chain.outputs[step.key] = checks
                    except StepSkipped as why:
                        entry.update(status="skipped", reason=str(why))
                    except KeyboardInterrupt:
                        entry.update(status="failed", error="interrupted", traceback=traceback.format_exc())
                        raise
                    except BaseException as error:  # noqa: BLE001 - SystemExit and StepTimeout fail the step too
                        entry.update(status="failed", error=f"{type(error).__name__}: {error}")
                        entry["traceback"] = traceback.format_exc()
                        if isinstance(error, CheckFailed):
                            entry["checks"] = error.checks
                        traceback.print_exc()  # into the step's log
                    finally:
                        entry["seconds"] = round(time.perf_counter() - began, 1)
                _free_gpu_memory()
            status[step.key] = entry["status"]
            save()
            print(step_line(entry), file=console, flush=True)
    finally:
        logs.close()
        save()
    return result


def step_line(entry: dict) -> str:
    """One line for the console: status, name, seconds, and the reason or the error."""
    line = f"[{entry['status']}] {entry['name']}"
    if "seconds" in entry:
        line += f" ({entry['seconds']} s)"
    if entry.get("error"):
        line += f": {entry['error'].splitlines()[0][:300]} (log: {entry.get('log')})"
    elif entry.get("reason"):
        line += f": {entry['reason']}"
    elif (entry.get("checks") or {}).get("note"):
        line += f"; note: {entry['checks']['note'][:500]}"
    return line


def render(result: dict) -> str:
    """The check's results as Markdown."""
    cuda = result["cuda"]
    lines = [
        "# GPU check" + (" (dry run on the CPU: nothing here is a GPU figure)" if result["dry_run"] else " on CUDA"),
        "",
        f"Device: {result['device']}; Python {result['python']}; torch {cuda['torch']} (CUDA build "
        f"{cuda['torch_cuda_build']}), driver {cuda['driver']}; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items() if k != "torch")
        + f". Total {result['total_seconds']} s, peak GPU memory {result.get('peak_gpu_memory_gib')} GiB (this "
        f"process), {result['failed']} failed step(s).",
        "",
        "| step | result | seconds | checks or why |",
        "|---|---|---|---|",
    ]
    for step in result["steps"]:
        if step.get("error"):
            detail = step["error"].splitlines()[0][:300] + f" (log: {step.get('log')})"
        elif step.get("reason"):
            detail = step["reason"]
        else:
            checks = step.get("checks") or {}
            detail = ", ".join(f"{k}: {v}" for k, v in checks.items() if not k.startswith(("text", "path_")))
        detail = detail.replace("|", "/").replace("\n", " ")
        detail = detail if len(detail) <= 400 else detail[:400] + " ... (all of it: gpu_chain.json)"
        lines.append(f"| {step['name']} | {step['status']} | {step.get('seconds', '')} | {detail} |")
    return "\n".join(lines) + "\n"


# ---- the preflight -------------------------------------------------------------------------------------------------


def driver_and_gpus() -> tuple[str | None, list[str], str | None]:
    """The NVIDIA driver version and the GPUs that ``nvidia-smi`` reports: ``(driver, gpus, why not)``."""
    query = ["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"]
    try:
        proc = subprocess.run(query, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return None, [], "nvidia-smi is not on the PATH (no NVIDIA driver here?)"
    except subprocess.TimeoutExpired:
        return None, [], "nvidia-smi did not answer in 30 s"
    if proc.returncode:
        return None, [], f"nvidia-smi failed: {(proc.stderr or proc.stdout).strip()}"
    rows = [[cell.strip() for cell in line.split(",")] for line in proc.stdout.strip().splitlines() if line.strip()]
    return (rows[0][0] if rows else None), [f"{row[1]} ({row[2]})" for row in rows if len(row) > 2], None


def cuda_problem(
    torch_version: str, cuda_build: str | None, driver: str | None, available: bool, why_no_driver: str | None
) -> str | None:
    """What stops CUDA here, in words, or ``None``: a CPU-only torch, a driver older than its CUDA build, no device."""
    if cuda_build is None:
        return f"torch {torch_version} is built without CUDA: this interpreter's torch cannot use a GPU"
    if driver is not None:
        need = MIN_DRIVER.get(int(cuda_build.split(".")[0]))
        if need and int(driver.split(".")[0]) < need:
            return (
                f"driver {driver} is older than CUDA {cuda_build} needs (>= {need}): use a torch built for a CUDA "
                "this driver runs (nvidia-smi shows the highest), or a newer driver"
            )
    if not available:
        if driver is None:
            return f"no CUDA device: {why_no_driver}"
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f" (CUDA_VISIBLE_DEVICES={shown!r})" if shown is not None else ""
        return f"no CUDA device: torch sees none although driver {driver} is loaded{hidden}"
    return None


def cuda_report() -> dict:
    """torch, its CUDA build, the driver and the GPUs, and what stops CUDA (``problem``, ``None`` when nothing)."""
    import torch

    driver, gpus, why = driver_and_gpus()
    available = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda,
        "driver": driver,
        "gpus": gpus,
        "cuda_available": available,
        "device": torch.cuda.get_device_name() if available else None,
        "problem": cuda_problem(torch.__version__, torch.version.cuda, driver, available, why),
    }


def versions() -> dict[str, str | None]:
    """Installed versions of :data:`VERSIONS` (``None`` when missing)."""
    found = {}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def preflight(chain: Chain) -> dict:
    """What this interpreter lacks of the check's packages (and of theirs), and what CUDA it has.

    A missing requirement fails the step; one at another version is reported (``note``) and the steps show whether
    it matters.
    """
    report = gpu_wheels.missing_here(gpu_wheels.pinned_requirements())
    checks = {**report, "cuda": {k: v for k, v in chain.cuda.items() if k != "problem"}}
    checks["pythonpath"] = os.environ.get("PYTHONPATH")  # a wheelhouse installed for this run comes first
    for line in preflight_lines(chain.cuda, report):
        print(line)
    if report["other_version"]:
        checks["note"] = f"{len(report['other_version'])} at another version: " + "; ".join(report["other_version"])
    if report["missing"]:
        raise CheckFailed(f"{len(report['missing'])} missing: " + "; ".join(report["missing"])[:1500], checks)
    return checks


def preflight_lines(cuda: dict, packages: dict | None = None) -> list[str]:
    """The preflight in words: torch and its CUDA build, the driver, the GPUs, what is missing."""
    lines = [
        f"python {platform.python_version()} at {sys.executable}",
        f"torch {cuda['torch']}, built for CUDA {cuda['torch_cuda_build']}; driver {cuda['driver']}; "
        f"GPUs: {', '.join(cuda['gpus']) or 'none seen'}",
        f"CUDA: {cuda['problem'] or 'usable, ' + str(cuda['device'])}",
    ]
    if packages is not None:
        lines.append(f"missing: {', '.join(packages['missing']) or 'nothing'}")
        lines.append(f"at another version: {', '.join(packages['other_version']) or 'nothing'}")
        own = ", ".join(f"{k} {v}" for k, v in packages["own_build"].items())
        lines.append(f"this interpreter's own build, never replaced: {own}")
        absent = [name for name, version in packages["not_needed"].items() if version is None]
        lines.append(f"not needed by the check, absent here: {', '.join(absent) or 'none'}")
        lines.append(f"PYTHONPATH (a wheelhouse's folder first): {os.environ.get('PYTHONPATH')}")
    return lines


def wheelhouse(chain: Chain) -> dict:
    """The wheelhouse this node needs (the pins against its package list) and that it fits with the tree."""
    installed = gpu_wheels.read_installed(chain.check.installed)
    planned, left_out = gpu_wheels.plan(gpu_wheels.pinned_requirements(), installed)
    if chain.check.wheels:
        folder = Path(chain.check.wheels).resolve()
        contents = gpu_wheels.wheelhouse_contents(folder)
        source = str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder)
    else:
        manifest = json.loads((RESULTS / "gpu_wheels.json").read_text())
        contents = [{k: w[k] for k in ("name", "version", "bytes")} for w in manifest["wheels"]]
        source = "benchmarks/results/gpu_wheels.json"
    checks = gpu_wheels.check_wheelhouse(planned, contents, gpu_wheels.tracked_bytes())
    return {"source": source, **checks, "left_out": [item.name for item in left_out]}


# ---- the tiny chain ------------------------------------------------------------------------------------------------
# The steps import the project and its libraries themselves: the preflight runs first and says what is missing.


def run_cli(main: Callable, argv: list[str]) -> tuple[int, str]:
    """Call a console script's ``main`` in process: its exit status and what it printed (also kept in the log)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    sys.stdout.write(out.getvalue())
    return int(status or 0), out.getvalue()


def run_logged(command: list[str], timeout: float, env: dict | None = None) -> tuple[int, list[str]]:
    """Run ``command`` in its own process group, its output into the step's log; kill the group after ``timeout``.

    Returns:
        The exit status and the last 40 lines of output.

    Raises:
        StepTimeout: If it ran past ``timeout`` (it is killed, with its children).
    """
    sys.stdout.flush()
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    tail: deque[str] = deque(maxlen=40)
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line.rstrip("\n"))
        status = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            kill()
            proc.wait()
    if expired.is_set():
        raise StepTimeout(f"{' '.join(command[:3])}... ran past {timeout:.0f} s and was killed")
    return status, list(tail)


def gpu_tests(chain: Chain) -> dict:
    """The ``gpu``-marked tests, on the first visible device."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    env = {**os.environ, "GEOLLAVA_TEST_CUDA": first}
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/trainer/test_pruning_gpu.py", "-q"]
    status, tail = run_logged([*command, "-p", "no:cacheprovider"], timeout=240, env=env)
    summary = tail[-1] if tail else ""
    if status:
        raise CheckFailed(f"pytest -m gpu exited {status}: {summary}", {"pytest": summary})
    return {"pytest": summary}


def make_data(chain: Chain) -> dict:
    """Synthetic fMoW scenes built into a Hub-layout dataset folder (frames only: no mp4 clips)."""
    from dataset_builder.build import BuildConfig, build
    from dataset_builder.synthetic.synth import SynthConfig, generate_tree

    root = chain.root
    generate_tree(SynthConfig(out=str(root / "fmow"), locations=60, seed=0, image_size=96, oversize_fraction=0))
    config = BuildConfig(
        fmow_root=str(root / "fmow"), out=str(root / "dataset"), frame_size=64, sample_size=0, no_videos=True
    )
    report = build(config)
    return {"build_seconds": report.get("seconds"), "path_dataset": str(root / "dataset")}


def train(chain: Chain) -> dict:
    """The tiny base and geollava-train with the QLoRA + 5 % pruning recipe; checks what the run wrote."""
    from trainer.sft import main as train_main
    from trainer.tiny.build import build_tiny_model

    root, device, cuda = chain.root, chain.device, chain.device == "cuda"
    base = build_tiny_model("llava-next-video", root / "base", image_size=64)
    argv = ["--config", chain.check.tiny_recipe, "--model_name_or_path", str(base)]
    argv += ["--dataset_name", chain.outputs["data"]["path_dataset"], "--output_dir", str(root / "adapter")]
    argv += ["--max_steps", str(chain.check.train_steps), "--use_cpu", str(not cuda).lower()]
    argv += ["--bf16", str(cuda).lower(), "--dtype", "bfloat16" if cuda else "float32"]
    argv += ["--logging_steps", "5", "--disable_tqdm", "true", "--plot", "false"]
    status, _ = run_cli(train_main, argv)
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
        "path_base": str(base),
        "path_adapter": str(root / "adapter"),
    }
    ok = status == 0 and checks["trained_on"].startswith(device) and checks["quantization"] == "nf4"
    if not (ok and checks["pruned_exactly"] and checks["adapter_names_the_real_base"]):
        raise CheckFailed(f"training checks failed: {checks}", checks)
    return checks


def evaluate(chain: Chain) -> dict:
    """geollava-eval on the test split, batched on the device."""
    from trainer.evaluation.run_eval import main as eval_main

    trained, out, rows = chain.outputs["train"], chain.root / "eval", chain.check.eval_rows
    argv = ["--model", trained["path_base"], "--adapter", trained["path_adapter"]]
    argv += ["--dataset", chain.outputs["data"]["path_dataset"], "--split", "test", "--limit", str(rows)]
    argv += ["--batch_size", "8", "--max_new_tokens", "48", "--device", chain.device, "--out", str(out)]
    argv += ["--model_metrics", "false", "--meteor", "false"]
    status, _ = run_cli(eval_main, argv)
    metrics = json.loads((out / "metrics.json").read_text())
    checks = {
        "exit_status": status,
        "generated_on": metrics["run"]["generation_device"],
        "rows": metrics["n_rows"],
        "rows_per_s": metrics["run"]["rows_per_s"],
        "rougeL": metrics.get("rougeL"),
        "path_predictions": str(out / "predictions.jsonl"),
    }
    if status or not str(checks["generated_on"]).startswith(chain.device) or checks["rows"] != rows:
        raise CheckFailed(f"evaluation checks failed: {checks}", checks)
    return checks


def score(chain: Chain) -> dict:
    """geollava-score on the device with a tiny encoder (the real one does not travel): the CPU's values."""
    from trainer.evaluation.score import main as score_main
    from trainer.tiny.encoder import build_tiny_encoder

    predictions = Path(chain.outputs["eval"]["path_predictions"])
    records = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    corpus = [text for r in records for text in (r["prediction"], *r["references"])]
    encoder = str(build_tiny_encoder(chain.root / "encoder", corpus))
    common = ["--predictions", str(predictions), "--sbert_model", encoder, "--bertscore_model", encoder]
    common += ["--bertscore_layers", "2", "--meteor", "false"]
    scored = {}
    for device in dict.fromkeys((chain.device, "cpu")):
        out = chain.root / f"score-{device}.json"
        status, _ = run_cli(score_main, [*common, "--device", device, "--out", str(out)])
        scored[device] = (status, json.loads(out.read_text()) if out.exists() else {})
    status, on_device = scored[chain.device]
    keys = ("bertscore_f1", "sbert_cosine")
    difference = max(abs(on_device.get(k, 0) - scored["cpu"][1].get(k, 0)) for k in keys)
    checks = {
        "exit_status": status,
        "encoder_device": on_device.get("encoder_device"),
        **{k: on_device.get(k) for k in keys},
        "max_difference_from_cpu": difference,
        "one_shared_pass": "one encoder pass shared"
        in on_device.get("models", {}).get("bertscore_f1", {}).get("detail", ""),
    }
    on_it = str(checks["encoder_device"]).startswith(chain.device)
    if status or scored["cpu"][0] or not on_it or difference > 1e-4 or not checks["one_shared_pass"]:
        raise CheckFailed(f"scoring checks failed: {checks}", checks)
    return checks


def frames(chain: Chain) -> tuple[Path, Path]:
    """The two frames of the first test row, as PNG files."""
    from datasets import load_dataset

    row = load_dataset(chain.outputs["data"]["path_dataset"], split="test")[0]
    paths = chain.root / "before.png", chain.root / "after.png"
    for image, path in zip(row["frames"], paths, strict=True):
        image.save(path)
    return paths


def predict(chain: Chain) -> dict:
    """geollava-predict on one pair, in bf16/fp32 and 4-bit."""
    from trainer.evaluation.predict import main as predict_main

    trained, (before, after) = chain.outputs["train"], frames(chain)
    common = ["--model", trained["path_base"], "--adapter", trained["path_adapter"], "--device", chain.device]
    status, text = run_cli(predict_main, [*common, "--max_new_tokens", "48", str(before), str(after)])
    status_4bit, text_4bit = run_cli(
        predict_main, [*common, "--max_new_tokens", "48", "--load_in_4bit", "true", str(before), str(after)]
    )
    checks = {
        "exit_status": status,
        "text": text.strip(),
        "exit_status_4bit": status_4bit,
        "text_4bit": text_4bit.strip(),
    }
    if status or status_4bit or not checks["text"] or not checks["text_4bit"]:
        raise CheckFailed(f"prediction checks failed: {checks}", checks)
    return checks


def space(chain: Chain) -> dict:
    """The Space's describe(): loaded on the CPU, moved to the device inside its GPU function (needs gradio, av)."""
    absent = [name for name in ("gradio", "av") if importlib.util.find_spec(name) is None]
    if absent:
        raise StepSkipped(f"{' and '.join(absent)} not importable here: the Space's function was not checked")
    from dataset_builder.prompts import PROMPT_TEMPLATES
    from spaces_demo import app

    trained = chain.outputs["train"]
    os.environ.update(BASE_MODEL_ID=trained["path_base"], ADAPTER_ID=trained["path_adapter"])
    os.environ["GEOLLAVA_DEVICE"] = chain.device
    app._MODEL.clear()
    try:
        before, after = frames(chain)
        text, _, status = app.describe(str(before), str(after), None, PROMPT_TEMPLATES[0], 48)
        model = app.get_model()["model"]
        checks = {
            "status": status.splitlines()[0],
            "model_on": str(next(model.parameters()).device),
            "text": text,
            "same_text_as_geollava_predict": text == chain.outputs["predict"]["text"],
        }
    finally:
        app._MODEL.clear()  # the 7B benchmark comes next: no model of this process stays on the GPU
    if not status.startswith("✅") or not checks["model_on"].startswith(chain.device) or not text:
        raise CheckFailed(f"Space checks failed: {checks}", checks)
    return checks


def gpu_train(chain: Chain) -> dict:
    """benchmarks/gpu_train.py in its own process, within what the budget leaves; its results per recipe."""
    check = chain.check
    results = chain.results_dir or chain.root / "gpu_train_results"
    work = chain.root / "gpu_train"
    command = [sys.executable, str(HERE / "gpu_train.py"), "--out_dir", str(results), "--work_dir", str(work)]
    if check.dry_run:
        command += ["--dry_run", "true", "--tokens_per_sample", "40", "--answer_tokens", "10"]
        command += ["--steps", "2", "--warmup_steps", "1", "--batch_sizes", "2"]
    else:
        command += ["--require_cuda", "true"]
    # On the GPU what the budget leaves (a minute at least); a dry run on a busy CPU keeps the whole allowance.
    timeout = check.gpu_train_timeout if check.dry_run else max(60.0, min(check.gpu_train_timeout, chain.time_left()))
    try:
        status, tail = run_logged(command, timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the 7B base (~14 GB) even when the run was killed
    path = Path(results) / "gpu_train.json"
    recipes = json.loads(path.read_text())["recipes"] if path.exists() else []
    checks = {"timeout_s": round(timeout), "exit_status": status}
    checks |= {r["recipe"]: r.get("error") or f"{r['samples_per_s']} samples/s at batch {r['batch']}" for r in recipes}
    if status:
        raise CheckFailed(f"gpu_train.py exited {status}: {tail[-1] if tail else ''}", checks)
    return checks


def gpu_steps(check: GpuCheckConfig) -> list[Step]:
    """The check's steps, in order (without the CUDA-only ones in a dry run)."""
    device = "cpu" if check.dry_run else "cuda"

    def guard(seconds: float) -> float | None:
        return None if check.dry_run else seconds  # hang guards on the GPU; a busy CPU has no expected time

    steps = [
        Step("preflight", "preflight: packages, torch, CUDA, driver", preflight),
        Step("wheelhouse", "wheelhouse: the node's plan and the size limit", wheelhouse),
    ]
    if not check.dry_run:
        steps.append(Step("pytest", "pytest -m gpu", gpu_tests))
    steps += [
        Step("data", "synthetic data + geollava-build", make_data, timeout_s=guard(120)),
        Step("train", "geollava-train: tiny QLoRA NF4 + 5 % pruning", train, ("data",), guard(300)),
        Step("eval", f"geollava-eval --device {device}", evaluate, ("train",), guard(180)),
        Step("score", f"geollava-score --device {device} (tiny encoder)", score, ("eval",), guard(120)),
        Step("predict", f"geollava-predict --device {device}", predict, ("train",), guard(180)),
        Step("space", "the Space's describe()", space, ("predict",), guard(180)),
        Step("gpu_train", "benchmarks/gpu_train.py: the 7B recipes" + (" (tiny config)" * check.dry_run), gpu_train),
    ]
    return steps


def results_header(check: GpuCheckConfig, cuda: dict) -> dict:
    """The results' first keys: the device, the dry run, Python and the packages' versions, the CUDA report."""
    return {
        "device": cuda["device"] or f"cpu ({platform.machine()}, dry run)",
        "dry_run": check.dry_run,
        "python": platform.python_version(),
        "versions": versions(),
        "cuda": cuda,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make gpu-check``; returns the number of failed steps (1 when CUDA is not usable)."""
    (check,) = HfArgumentParser(GpuCheckConfig).parse_args_into_dataclasses(args=argv)
    cuda = cuda_report()
    for line in preflight_lines(cuda):
        print(f"[preflight] {line}", flush=True)
    if not check.dry_run and cuda["problem"]:
        print(f"gpu-check: {cuda['problem']}. {NO_CUDA}", file=sys.stderr)
        return 1
    steps = gpu_steps(check)
    unknown = set(check.step_keys) - {s.key for s in steps}
    if unknown:
        print(f"gpu-check: --steps {check.steps!r}: unknown {sorted(unknown)}; choose from {[s.key for s in steps]}")
        return 2
    steps = [s for s in steps if not check.step_keys or s.key in check.step_keys]
    out_dir = check.out_dir or (None if check.dry_run else str(RESULTS))
    results_dir = Path(out_dir) if out_dir else None
    header = results_header(check, cuda)
    work = Path(check.work_dir or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    chain = Chain(check, "cpu" if check.dry_run else "cuda", work, results_dir, cuda)
    log_dir = (results_dir or work) / "gpu_logs"
    environment = dict(os.environ)
    # Progress bars would fill the step logs with carriage returns. These are read at import: by the child processes
    # (pytest, gpu_train.py) and by the libraries a step imports first; bars of what is already imported remain.
    os.environ.update(TQDM_DISABLE="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    try:
        result = run_steps(steps, chain, header, log_dir)
    finally:
        os.environ.clear()
        os.environ.update(environment)
        shutil.rmtree(work, ignore_errors=True)
    print(render(result))
    return min(result["failed"], 100)


if __name__ == "__main__":
    sys.exit(main())
