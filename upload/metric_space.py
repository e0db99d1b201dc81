"""Stage an ``evaluate`` module folder as the Hub's metric kind of Space, so ``evaluate.load("<org>/<name>")`` works.

    stage_metric("outputs/metrics/geollava_metrics", "outputs/staged", repo_id="my-org/geollava_metrics")

The staged copy keeps the folder's files and fills in what a metric Space needs: the tags ``evaluate`` and ``metric``,
``sdk``/``app_file`` in the card, evaluate's widget page where the folder has no ``app.py`` (it runs on gradio 3:
:data:`WIDGET_GRADIO`, :data:`WIDGET_REQUIREMENTS`) and the requirements. See docs/release.md.
"""

import importlib.metadata
import logging
import shutil
import sys
from pathlib import Path

from huggingface_hub import SpaceCard

from dataset_builder.import_closure import top_level_imports
from model_cards.validate import validate_card
from upload.space_bundle import canonical, split_requirement
from upload.staging import staged_files


logger = logging.getLogger(__name__)

#: The tags that make a Space a metric on the Hub (evaluate's own metric Spaces carry them).
METRIC_TAGS = ("evaluate", "metric")
#: The last gradio 3: evaluate 0.4.6's ``launch_gradio_widget`` needs ``gr.inputs``, which gradio 4 removed.
WIDGET_GRADIO = "3.50.2"
#: What gradio 3.50.2 starts with (numpy 1 for its pandas, so pyarrow < 19 and datasets < 4, so huggingface-hub < 1;
#: starlette < 0.28 for its templates, through fastapi < 0.100, which wants pydantic 1).
WIDGET_REQUIREMENTS = (
    "evaluate==0.4.6",
    "datasets<4",
    "huggingface-hub<1",
    "pyarrow<19",
    "fastapi<0.100",
    "pydantic<2",
)
WIDGET_APP = '''"""The metric's page on the Hub: evaluate's own widget, on the module script beside this file."""

from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget


module = evaluate.load(str(Path(__file__).with_name("{script}")))
launch_gradio_widget(module)
'''


def _script_requirements(folder: Path, scripts: list[Path], widget: bool) -> list[str]:
    """``evaluate`` and the distributions the module's scripts import (unpinned: the page's gradio constrains them).

    With the widget page: :data:`WIDGET_REQUIREMENTS` first; else ``evaluate`` at the version installed here.
    """
    local = {p.stem for p in scripts}
    tops = set()
    for script in scripts:
        tops |= top_level_imports((folder / script).read_text(), str(script))
    fixed = list(WIDGET_REQUIREMENTS) if widget else [f"evaluate=={importlib.metadata.version('evaluate')}"]
    owners = importlib.metadata.packages_distributions()
    dists = set()
    for top in sorted(tops - local - set(sys.stdlib_module_names)):
        if top not in owners:
            raise ValueError(f"{folder}: a script imports {top!r}, which no installed distribution provides")
        dists.add(canonical(owners[top][0]))
    named = {split_requirement(r)[0] for r in fixed} | {"gradio"}  # gradio: the card's sdk_version
    return fixed + sorted(dists - named)


def _card(folder: Path, widget: bool) -> str:
    """The folder's metric card with the metric tags, ``sdk``, ``app_file`` (and the widget's gradio) filled in."""
    readme = folder / "README.md"
    if not readme.is_file():
        raise FileNotFoundError(f"{folder}: no README.md; a metric module needs its metric card")
    card = SpaceCard(readme.read_text(encoding="utf-8"))
    data = card.data
    data.tags = list(data.tags or []) + [t for t in METRIC_TAGS if t not in (data.tags or [])]
    data.sdk = data.sdk or "gradio"
    data.app_file = data.app_file or "app.py"
    if widget:
        if data.sdk_version and data.sdk_version.split(".")[0] != "3":
            logger.info("the widget page needs gradio 3: sdk_version %s -> %s", data.sdk_version, WIDGET_GRADIO)
        data.sdk_version = WIDGET_GRADIO
    elif not data.sdk_version:
        data.sdk_version = importlib.metadata.version("gradio")
    text = str(card)
    validate_card(text, "space")
    return text


def stage_metric(folder: Path | str, out: Path | str, *, repo_id: str) -> Path:
    """Write the Space repo of the ``evaluate`` module in ``folder`` into the empty folder ``out``.

    Args:
        folder: The module's folder: ``<name>.py`` (its ``evaluate.Metric``), ``README.md`` (its card), and
            optionally ``app.py``, ``requirements.txt``, ``packages.txt`` and other scripts it imports.
        out: Where to stage it (created; must be empty).
        repo_id: ``ORG/NAME`` it will be pushed to; ``evaluate.load`` reads ``NAME.py`` there.

    Returns:
        ``out``.

    Raises:
        FileNotFoundError: If ``folder`` has no ``NAME.py`` or no ``README.md``.
        ValueError: If a script imports a package that is not installed here.
    """
    folder, out = Path(folder), Path(out)
    name = repo_id.split("/")[-1]
    files = staged_files("metric", folder)
    scripts = [p for p in files if p.suffix == ".py" and p.name != "app.py"]
    if Path(f"{name}.py") not in files:
        found = ", ".join(p.as_posix() for p in scripts) or "none"
        raise FileNotFoundError(
            f"{folder}: no {name}.py; evaluate.load('{repo_id}') runs the script named like the repo "
            f"(scripts here: {found})"
        )
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: not empty")
    out.mkdir(parents=True, exist_ok=True)
    for rel in files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / rel, out / rel)
    widget = not (folder / "app.py").is_file()
    if widget:
        (out / "app.py").write_text(WIDGET_APP.format(script=f"{name}.py"))
    (out / "README.md").write_text(_card(folder, widget), encoding="utf-8")
    if not (folder / "requirements.txt").is_file():
        (out / "requirements.txt").write_text("\n".join(_script_requirements(folder, scripts, widget)) + "\n")
    return out
