"""A file's import closure in the project, and its two layouts: package paths (the Space) and one flat folder."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_builder.import_closure import import_closure, stage_closure, top_level_imports


def _source(module: str) -> Path:
    return Path(importlib.util.find_spec(module).origin)


def test_the_closure_follows_imports_through_modules_and_functions_but_not_type_checking(tmp_path):
    entry = tmp_path / "app.py"
    entry.write_text(
        "from typing import TYPE_CHECKING\n"
        "import numpy as np\n"
        "from trainer.evaluation import grounding\n"
        "if TYPE_CHECKING:\n"
        "    from trainer.models.loading import load_for_inference\n"
        "def f():\n"
        "    import yaml\n"
        "    from trainer.evaluation.metrics import mean\n"
    )
    closure = import_closure(entry)
    carried = ["trainer.evaluation.grounding", "trainer.evaluation.metrics", "dataset_builder.changes"]
    assert set(closure.modules) == {"trainer", "trainer.evaluation", "dataset_builder", *carried}
    assert closure.imported() == carried  # the packages on the way are no import of their own
    assert closure.imports["app.py"] == [(3, "trainer.evaluation.grounding"), (8, "trainer.evaluation.metrics")]
    assert [module for _, module in closure.imports["trainer.evaluation.grounding"]] == ["dataset_builder.changes"]
    assert closure.modules["trainer.evaluation"] == _source("trainer.evaluation")
    assert closure.top_level == {"numpy": ["app.py:2"]}  # metrics imports its libraries inside its functions
    assert closure.local["yaml"] == ["app.py:7"] and closure.local["rouge_score"][0].startswith("trainer.evaluation.")
    assert "trainer.models.loading" not in closure.modules


def test_a_name_of_a_package_imports_the_package_itself(tmp_path):
    entry = tmp_path / "app.py"
    entry.write_text("from trainer.evaluation import metrics, nothing_here\n")
    assert import_closure(entry).imports["app.py"] == [(1, "trainer.evaluation.metrics"), (1, "trainer.evaluation")]


def test_the_package_layout_copies_each_module_byte_for_byte_at_its_path(tmp_path):
    entry = tmp_path / "app.py"
    entry.write_text("from trainer.evaluation.grounding import grounding_scores\n")
    written = stage_closure(import_closure(entry), tmp_path / "out")
    expected = ["dataset_builder/__init__.py", "dataset_builder/changes.py", "trainer/__init__.py"]
    expected += ["trainer/evaluation/__init__.py", "trainer/evaluation/grounding.py"]
    assert sorted(p.as_posix() for p in written) == expected
    for rel in written:
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        assert (tmp_path / "out" / rel).read_bytes() == _source(module).read_bytes(), rel
    assert not (tmp_path / "out" / "app.py").exists()  # the caller copies its own folder


def test_the_flat_layout_makes_the_imports_relative_and_runs_on_its_own(tmp_path):
    entry = tmp_path / "entry.py"
    entry.write_text(
        "from trainer.evaluation import grounding\n"
        "from dataset_builder.changes import CHANGE_KINDS\n"
        "KINDS = grounding.extract_change_kinds('a new road was built')\n"
    )
    stage_closure(import_closure(entry), tmp_path / "flat", flat=True)
    folder = tmp_path / "flat"
    assert sorted(p.name for p in folder.iterdir()) == ["changes.py", "entry.py", "grounding.py"]
    assert (folder / "entry.py").read_text().splitlines()[:2] == [
        "from . import grounding",
        "from .changes import CHANGE_KINDS",
    ]
    grounding = (folder / "grounding.py").read_text()
    assert "from .changes import extract_change_kinds" in grounding
    assert (
        grounding.replace("from .changes", "from dataset_builder.changes")
        == _source("trainer.evaluation.grounding").read_text()
    )
    # a package of its own, with no project installed on the path: only the copies are there to import
    code = "import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p]; import flat.entry as e"
    code += "; print(sorted(e.KINDS), 'trainer' in sys.modules)"
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["['road_built']", "False"]


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("import trainer.evaluation.metrics\n", r"entry.py:1: the import of trainer.evaluation.metrics could not be"),
        ("from trainer.evaluation import metrics, mean\n", r"entry.py:1: import the modules of trainer.evaluation"),
        ("from trainer.models import families\nfrom trainer.tiny import families as f\n", r"would both be families"),
    ],
)
def test_the_flat_layout_refuses_what_it_cannot_carry(tmp_path, source, error):
    entry = tmp_path / "entry.py"
    entry.write_text(source)
    with pytest.raises(ValueError, match=error):
        stage_closure(import_closure(entry), tmp_path / "flat", flat=True)
    assert not (tmp_path / "flat").exists()


def test_top_level_imports_names_the_absolute_ones():
    source = "import os.path\nfrom . import helper\nfrom evaluate.utils import x\ndef f():\n    import numpy\n"
    assert top_level_imports(source, "script.py") == {"os", "evaluate", "numpy"}
