"""Stage a Space repo that stands alone: the app, the project modules it imports, its requirements and settings.

    stage_space("spaces_demo", "outputs/space", repo_id="my-org/geollava-demo", model_repo_id="my-org/geollava-lora")

The project modules are the import closure of ``app.py`` (``dataset_builder.import_closure``) and the requirements the
packages that closure imports, with the project's pins; a module that imports a package outside
:data:`INFERENCE_PACKAGES` at its top level fails the staging. See docs/space.md.
"""

import functools
import importlib.metadata
import logging
import re
import shutil
from pathlib import Path

from dataset_builder.import_closure import PROJECT_PACKAGES, Closure, import_closure, stage_closure
from model_cards.render import SPACE_CONFIG_FILE, read_space_settings, write_space_release
from upload.staging import staged_files


logger = logging.getLogger(__name__)

#: The distributions a Space may install, and why it needs them: inference only.
INFERENCE_PACKAGES = {
    "torch": "the model",
    "torchvision": "the video processors of transformers import it",
    "transformers": "the model classes and processors",
    "peft": "the LoRA adapter",
    "safetensors": "the pruning masks",
    "huggingface-hub": "downloads of the base model and the adapter",
    "gradio": "the page",
    "spaces": "ZeroGPU's @spaces.GPU",
    "pillow": "images",
    "av": "2-frame clips",
    "numpy": "pixels and masks",
    "tifffile": "GeoTIFF uploads",
    "tqdm": "progress bars of the prediction code",
}
#: Installed although no module imports them by name.
ALWAYS = ("torchvision",)
#: Files of the app folder that the push writes itself.
GENERATED = ("README.md", "requirements.txt", SPACE_CONFIG_FILE)


def canonical(name: str) -> str:
    """A distribution name in PEP 503 normal form (``Pillow`` -> ``pillow``, ``huggingface_hub`` -> ...-hub)."""
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(?:;(.*))?$")


def split_requirement(text: str) -> tuple[str, str, str]:
    """``(canonical name, version specifier, marker)`` of a requirement line such as ``pytest>=8; extra == "dev"``.

    Raises:
        ValueError: If ``text`` is not a requirement.
    """
    match = _REQUIREMENT.match(text)
    if not match:
        raise ValueError(f"{text!r}: not a requirement")
    return canonical(match.group(1)), match.group(2).replace(" ", ""), (match.group(3) or "").strip()


@functools.cache
def _module_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distribution(top: str) -> str:
    dists = _module_distributions().get(top)
    if not dists:
        raise ValueError(f"no installed distribution provides the module {top!r}")
    return canonical(dists[0])


def _declared() -> dict[str, str]:
    """The project's own requirements (``pyproject.toml``, as installed): canonical name -> requirement text."""
    declared = {}
    for text in importlib.metadata.requires("geollava") or []:
        name, specifier, marker = split_requirement(text)
        if "extra" not in marker:
            declared[name] = f"{name}{specifier}"
    return declared


def space_requirements(closure: Closure) -> list[str]:
    """The Space's requirements: each inference package the closure imports, with the project's pin.

    Raises:
        ValueError: Naming the module and line of a top-level import of a package outside
            :data:`INFERENCE_PACKAGES`, or of a package ``pyproject.toml`` does not declare.
    """
    declared, needed = _declared(), {}
    for top, sites in closure.top_level.items():
        dist = _distribution(top)
        if dist not in INFERENCE_PACKAGES:
            raise ValueError(
                f"{sites[0]} imports {top} ({dist}) at module level: the Space installs only inference packages "
                f"({', '.join(sorted(INFERENCE_PACKAGES))}); import it where it is used (with the reason), or, if "
                "inference really needs it, add it to upload.space_bundle.INFERENCE_PACKAGES"
            )
        needed[dist] = sites
    for top, sites in closure.local.items():
        dist = _distribution(top)
        if dist in INFERENCE_PACKAGES:
            needed[dist] = sites
        elif dist not in needed:
            logger.info("%s imports %s inside a function: not installed on the Space (%s)", sites[0], top, dist)
    lines = []
    for dist in sorted({*needed, *ALWAYS}):
        if dist == "gradio":  # the version the card's sdk_version names: the Space runs the gradio it was tested on
            lines.append(f"gradio=={importlib.metadata.version('gradio')}")
        elif dist in declared:
            lines.append(declared[dist])
        else:
            raise ValueError(f"{needed[dist][0]} imports {dist}, which pyproject.toml does not declare")
    return lines


def requirements_text(closure: Closure) -> str:
    """The Space's ``requirements.txt``: :func:`space_requirements` under a header that says where they come from."""
    header = (
        "# Written by geollava-push space: the inference packages app.py and the modules beside it import, with\n"
        "# the pins of the project's pyproject.toml (gradio: the README's sdk_version). The project itself is not\n"
        "# installed: the modules of it that the app imports ship beside app.py.\n"
    )
    return header + "\n".join(space_requirements(closure)) + "\n"


def _copy_app_files(folder: Path, out: Path) -> list[Path]:
    copied = []
    for rel in staged_files("space", folder):
        if rel.as_posix() in (*GENERATED, "__init__.py") or rel.parts[0] in PROJECT_PACKAGES:
            continue  # written by the push, copied from the installed project, or spaces_demo's own package marker
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / rel, out / rel)
        copied.append(rel)
    return copied


def stage_space(
    folder: Path | str,
    out: Path | str,
    *,
    repo_id: str,
    **release: str | None,
) -> Path:
    """Write the Space repo for the app in ``folder`` into the empty folder ``out``.

    ``out`` gets the app's files (``app.py``, ``examples/``, ...), the project modules ``app.py`` imports (at their
    package paths), ``requirements.txt`` (:func:`space_requirements`), ``space_config.json`` and ``README.md``
    (``model_cards.render.write_space_release``).

    Args:
        folder: The app's folder (``spaces_demo/`` or a copy).
        out: Where to stage it (created; must be empty).
        repo_id: The Space's Hub id (shown in its card).
        **release: What it serves, any of ``model_repo_id`` (the adapter's Hub id), ``base_model`` (default: the
            adapter's ``base_model_name_or_path``), ``dataset_repo_id``, ``hardware`` (a Hub hardware name); each
            defaults to what ``folder``'s own ``space_config.json`` says (``model_cards.render.read_space_settings``).

    Returns:
        ``out``.

    Raises:
        FileNotFoundError: If ``folder`` has no ``app.py``.
        ValueError: As :func:`space_requirements`, or for bad ids or hardware.
    """
    folder, out = Path(folder), Path(out)
    if not (folder / "app.py").is_file():
        raise FileNotFoundError(f"{folder}: no app.py (a Space folder holds the app, e.g. spaces_demo/)")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: not empty")
    unknown = set(release) - {"model_repo_id", "base_model", "dataset_repo_id", "hardware"}
    if unknown:
        raise ValueError(f"{sorted(unknown)}: not a setting of a Space")
    settings = read_space_settings(folder) | {k: v for k, v in release.items() if v}
    if not settings.get("model_repo_id"):
        logger.warning("the Space names no adapter: pass --model-repo-id, or set ADAPTER_ID in the Space's variables")
    closure = import_closure(folder / "app.py")
    requirements = requirements_text(closure)
    out.mkdir(parents=True, exist_ok=True)
    _copy_app_files(folder, out)
    stage_closure(closure, out)
    (out / "requirements.txt").write_text(requirements)
    write_space_release(out, repo_id, **settings)
    logger.info("staged the Space: %d project modules; requirements.txt:\n%s", len(closure.modules), requirements)
    return out
