"""A Space repo that stands alone: the app, the project modules it imports, inference-only requirements, settings."""

import json
import subprocess
import sys
from pathlib import Path

import gradio
import pytest
import tomllib
import yaml
from huggingface_hub import HfApi, snapshot_download
from packaging.requirements import Requirement

from dataset_builder.import_closure import import_closure
from model_cards.render import main as card_main
from upload.push import main as push_main
from upload.space_bundle import INFERENCE_PACKAGES, canonical, requirements_text, stage_space


ROOT = Path(__file__).resolve().parents[2]
RELEASE = {
    "model_repo_id": "geo-org/tiny-lora",
    "base_model": "geo-org/tiny-base",
    "dataset_repo_id": "geo-org/geollava",
    "hardware": "cpu-basic",
}
#: Imported by nothing the Space runs: importing one of them in the staged Space fails the test.
BLOCKED = ("pyarrow", "datasets", "trl", "bitsandbytes", "openai", "evaluate", "model_cards", "upload", "spaces_demo")
BLOCKER = """
import sys
BLOCKED = set(sys.argv[1].split(","))
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked in the Space: {name}")
sys.meta_path.insert(0, Blocker())
import app, trainer, dataset_builder
print(trainer.__file__, dataset_builder.__file__, app.CONFIG_FILE)
"""


def _front_matter(path: Path) -> dict:
    return yaml.safe_load(path.read_text().split("---\n")[1])


def _requirements(path: Path) -> dict[str, Requirement]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {canonical(Requirement(line).name): Requirement(line) for line in lines}


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    out = tmp_path_factory.mktemp("space") / "repo"
    return stage_space(ROOT / "spaces_demo", out, repo_id="geo-org/demo", **RELEASE)


def test_staged_space_names_its_model_dataset_and_hardware(staged):
    meta = _front_matter(staged / "README.md")
    assert meta["models"] == ["geo-org/tiny-lora", "geo-org/tiny-base"]
    assert meta["datasets"] == ["geo-org/geollava"] and meta["suggested_hardware"] == "cpu-basic"
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ and meta["app_file"] == "app.py"
    settings = json.loads((staged / "space_config.json").read_text())
    assert settings == {
        "base_model": "geo-org/tiny-base",
        "adapter": "geo-org/tiny-lora",
        "dataset": "geo-org/geollava",
        "hardware": "cpu-basic",
    }


def test_requirements_are_inference_only_with_the_project_pins(staged):
    got = _requirements(staged / "requirements.txt")
    assert set(got) <= set(INFERENCE_PACKAGES)
    assert {"torch", "torchvision", "transformers", "peft", "gradio", "spaces", "av", "pillow"} <= set(got)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {canonical(Requirement(r).name): Requirement(r).specifier for r in pyproject}
    for name, requirement in got.items():
        expected = f"=={gradio.__version__}" if name == "gradio" else str(pins[name])
        assert str(requirement.specifier) == expected, name
    assert "geollava" not in (staged / "requirements.txt").read_text().replace("geollava-push", "")


def test_checked_in_requirements_are_what_the_push_writes():
    # spaces_demo/requirements.txt is the staged one; regenerate it with requirements_text when this fails
    closure = import_closure(ROOT / "spaces_demo" / "app.py")
    assert (ROOT / "spaces_demo" / "requirements.txt").read_text() == requirements_text(closure)


def test_the_staged_space_imports_only_from_itself(staged):
    # cwd = the staged folder: its dataset_builder/ and trainer/ shadow the installed project, so a module missing
    # from the copy fails the import; the blocker fails any import of the training stack or of other stages.
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, ",".join(BLOCKED)], cwd=staged, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [Path(p).resolve() for p in proc.stdout.split()]
    assert all(f.is_relative_to(staged.resolve()) for f in files), files
    shipped = {p.relative_to(staged).parts[0] for p in staged.rglob("*.py")}
    assert shipped == {"app.py", "dataset_builder", "trainer"}


def test_atomic_writes_bring_pyarrow_only_inside_the_function_that_needs_it():
    closure = import_closure(ROOT / "spaces_demo" / "app.py")
    assert "dataset_builder.atomic" in closure.modules  # the masks writer uses it
    assert "pyarrow" not in closure.top_level and closure.local["pyarrow"][0].startswith("dataset_builder.atomic:")


def test_a_heavy_top_level_import_fails_the_staging_naming_the_line(tmp_path):
    (tmp_path / "app.py").write_text("import os\n\nimport datasets\n")
    with pytest.raises(ValueError, match=r"app.py:3 imports datasets .*inference packages"):
        stage_space(tmp_path, tmp_path / "out", repo_id="geo-org/demo")
    assert not (tmp_path / "out").exists()


def test_push_without_flags_keeps_the_settings_geollava_card_wrote(tmp_path, caplog):
    import shutil

    folder = tmp_path / "space"
    shutil.copytree(ROOT / "spaces_demo", folder, ignore=shutil.ignore_patterns("__pycache__"))
    argv = ["space", str(folder), "--repo-id", "geo-org/demo", "--model-repo-id", "geo-org/tiny-lora"]
    assert card_main([*argv, "--dataset-repo-id", "geo-org/geollava"]) == 0
    out = stage_space(folder, tmp_path / "staged", repo_id="geo-org/demo")
    assert json.loads((out / "space_config.json").read_text())["adapter"] == "geo-org/tiny-lora"
    assert _front_matter(out / "README.md")["models"] == ["geo-org/tiny-lora"]
    flags = stage_space(folder, tmp_path / "flags", repo_id="geo-org/demo", model_repo_id="geo-org/other")
    assert json.loads((flags / "space_config.json").read_text())["adapter"] == "geo-org/other"
    assert json.loads((flags / "space_config.json").read_text())["dataset"] == "geo-org/geollava"


def test_push_cli_refuses_space_flags_elsewhere_and_bad_hardware(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text("{}")
    assert push_main(["model", str(tmp_path), "--repo-id", "geo-org/x", "--base-model", "a/b", "--dry-run"]) == 1
    assert "base_model: only a space push" in capsys.readouterr().err
    argv = ["space", str(ROOT / "spaces_demo"), "--repo-id", "geo-org/x", "--hardware", "quantum-1", "--dry-run"]
    assert push_main(argv) == 1
    assert "hardware: 'quantum-1'" in capsys.readouterr().err


def test_pushed_space_holds_the_bundle_and_the_hub_reads_its_card(hub_server, tmp_path, capsys):
    argv = ["space", str(ROOT / "spaces_demo"), "--repo-id", "geo-org/standalone"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in RELEASE.items()]
    assert push_main(argv) == 0
    assert "space_config.json" in capsys.readouterr().out
    info = HfApi().space_info("geo-org/standalone")
    assert info.sdk == "gradio" and info.card_data.get("suggested_hardware") == "cpu-basic"
    pulled = Path(snapshot_download("geo-org/standalone", repo_type="space", local_dir=str(tmp_path / "pulled")))
    for rel in ("app.py", "space_config.json", "trainer/models/loading.py", "trainer/evaluation/predict.py"):
        assert (pulled / rel).is_file(), rel
    assert (pulled / "trainer/models/loading.py").read_bytes() == (ROOT / "trainer/models/loading.py").read_bytes()
    assert not (pulled / "__init__.py").exists() and not (pulled / "model_cards").exists()


def test_a_broken_settings_file_in_the_folder_is_named(tmp_path):
    (tmp_path / "app.py").write_text("import os\n")
    (tmp_path / "space_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"space_config.json: expected a JSON object"):
        stage_space(tmp_path, tmp_path / "out", repo_id="geo-org/demo")
    with pytest.raises(ValueError, match="not a setting"):
        stage_space(tmp_path, tmp_path / "out", repo_id="geo-org/demo", model_id="a/b")
