"""The metrics as evaluate modules: staged folders load offline and from a Hub id, and equal geollava-score."""

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import SpaceCard

from dataset_builder.import_closure import PROJECT_PACKAGES, import_closure, stage_closure
from trainer.evaluation import metrics
from trainer.evaluation.hub_metrics import staging
from trainer.evaluation.hub_metrics.staging import stage_metric_module
from trainer.evaluation.score import main as score_main


ROWS = [
    {
        "id": "a",
        "prediction": "A new road was built in the north.",
        "references": ["A road was built in the north."],
        "changes": [{"kind": "road_built", "location": "north"}],
    },
    {"id": "b", "prediction": "Nothing changed.", "references": ["No change is visible."], "changes": []},
    {
        "id": "c",
        "prediction": "Trees were cleared and a lake grew.",
        "references": ["A forest was cleared.", "Trees were removed.", "The trees are gone."],
        "changes": [{"kind": "forest_cleared"}, {"kind": "water_expanded"}],
    },
    {"id": "d", "prediction": "", "references": ["A lake grew."], "changes": [{"kind": "water_expanded"}]},
]
PREDICTIONS = [r["prediction"] for r in ROWS]
REFERENCES = [r["references"] for r in ROWS]
KINDS = [[c["kind"] for c in r["changes"]] for r in ROWS]


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    out = tmp_path_factory.mktemp("metric_modules")
    return {name: stage_metric_module(name, out, repo_id=f"geo-org/{name}") for name in staging.MODULES}


def _geollava_score(tmp_path, *extra):
    pred = tmp_path / "p.jsonl"
    pred.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "metrics.json"
    assert score_main(["--predictions", str(pred), "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def _numbers(result: dict) -> dict:
    return {k: v for k, v in result.items() if isinstance(v, float | int) and not isinstance(v, bool)}


def test_a_staged_folder_carries_the_metric_code_with_relative_imports_only(staged):
    import evaluate.loading

    folder = staged["geollava_metrics"]
    copies = {"metric_sets", "metrics", "shared_encoder", "grounding", "changes"}
    assert {p.stem for p in folder.glob("*.py")} == {"geollava_metrics", "app", *copies}
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] not in PROJECT_PACKAGES, (path.name, node.module)
    # evaluate copies exactly the files the script imports itself: every copy, nothing missing
    imports = evaluate.loading.get_imports(str(folder / "geollava_metrics.py"))
    assert {name for kind, name, _, _ in imports if kind == "internal"} == copies
    assert {p.stem for p in staged["levircc_metrics"].glob("*.py")} == {
        "levircc_metrics",
        "app",
        "metrics",
    }
    # the copies are the project's own code, byte for byte apart from the import lines
    project = Path(staging.__file__).parents[1] / "metrics.py"
    assert (folder / "metrics.py").read_text() == project.read_text()


def test_the_card_is_a_metric_space_card(staged):
    for name, folder in staged.items():
        card = SpaceCard((folder / "README.md").read_text())
        assert card.data.sdk == "gradio" and card.data.app_file == "app.py", name
        assert {"evaluate", "metric"} <= set(card.data.tags), name
        assert f'evaluate.load("geo-org/{name}")' in card.text and "## Citation" in card.text, name
        assert "evaluate" in (folder / "requirements.txt").read_text(), name
    assert (staged["levircc_metrics"] / "packages.txt").read_text().split() == ["default-jre-headless"]
    with pytest.raises(ValueError, match="must be named 'levircc_metrics'"):
        stage_metric_module("levircc_metrics", staged["levircc_metrics"].parent, repo_id="geo-org/levircc")


@pytest.mark.parametrize("name", sorted(staging.MODULES))
def test_a_metric_script_imports_each_module_it_carries_itself(name):
    # evaluate copies only the script's own relative imports: what the copies import, the script imports too
    closure = import_closure(staging.HERE / f"{name}.py")
    direct = {module for _, module in closure.imports[f"{name}.py"]}
    assert direct and set(closure.imported()) == direct
    assert direct <= set(staging.CARRIED)


@pytest.mark.parametrize("module", staging.CARRIED)
def test_the_carried_modules_import_nothing_else_of_the_project(module):
    # read from the sources, without staging: the rule breaks the day one of them imports another project module
    path = Path(importlib.util.find_spec(module).origin)
    closure = import_closure(path)
    imported = {name for _, name in closure.imports[path.name]}
    assert imported <= set(staging.CARRIED), sorted(imported - set(staging.CARRIED))
    assert set(closure.imported()) <= set(staging.CARRIED)


def test_staging_refuses_code_a_module_cannot_carry(tmp_path, monkeypatch):
    monkeypatch.setattr(staging, "HERE", tmp_path)
    script = tmp_path / "levircc_metrics.py"
    script.write_text("import json\nfrom trainer.pruning.masks import load_masks\n")
    with pytest.raises(ValueError, match=r"levircc_metrics.py:2: imports trainer.pruning.masks, which a metric"):
        staging.module_closure("levircc_metrics")
    # a copy that needs a module the script does not import: evaluate would not copy it
    script.write_text("from trainer.evaluation.grounding import grounding_scores\n")
    with pytest.raises(ValueError, match=r"grounding.py imports \['dataset_builder.changes'\]: import them in"):
        staging.module_closure("levircc_metrics")
    with pytest.raises(ValueError, match="unknown metric module 'bleu'"):
        staging.module_closure("bleu")
    script.write_text("from trainer.evaluation import metrics\n")
    written = stage_closure(staging.module_closure("levircc_metrics"), tmp_path / "out", flat=True)
    assert sorted(p.name for p in written) == ["levircc_metrics.py", "metrics.py"]
    assert (tmp_path / "out" / "levircc_metrics.py").read_text() == "from . import metrics\n"


def test_evaluate_load_gives_geollava_scores_numbers(staged, tmp_path):
    import evaluate

    expected = _geollava_score(tmp_path, "--meteor", "false")
    module = evaluate.load(str(staged["geollava_metrics"]))
    got = module.compute(predictions=PREDICTIONS, references=REFERENCES, change_kinds=KINDS)
    keys = {"rouge1", "rouge2", "rougeL", "sentence_bleu2", "sacrebleu", "bertscore_f1", "sbert_cosine"}
    keys |= {"grounding_precision", "grounding_recall", "grounding_f1", "grounding_f1_macro", "grounding_exact_match"}
    assert keys <= set(_numbers(got))
    assert {k: got[k] for k in keys} == {k: expected[k] for k in keys}  # identical, not close
    assert got["grounding_per_kind"] == expected["grounding_per_kind"]
    # a single reference string per row, no change kinds: the same text metrics, no grounding
    single = module.compute(
        predictions=PREDICTIONS[:2], references=[r[0] for r in REFERENCES[:2]], model_metrics=False
    )
    rouge1 = metrics.rouge_scores(PREDICTIONS[:2], [r[:1] for r in REFERENCES[:2]])["rouge1"]
    assert "grounding_f1" not in single and single["rouge1"] == sum(rouge1) / 2
    with pytest.raises(ValueError, match=r"change_kinds row 0: \['road_paved'\] not among"):
        module.compute(predictions=PREDICTIONS[:1], references=REFERENCES[:1], change_kinds=[["road_paved"]])


def test_evaluate_load_gives_the_levircc_numbers_with_meteor(staged, tmp_path):
    import evaluate

    from trainer.evaluation.metrics import java_available

    expected = _geollava_score(tmp_path, "--model_metrics", "false")
    got = evaluate.load(str(staged["levircc_metrics"])).compute(predictions=PREDICTIONS, references=REFERENCES)
    keys = ["bleu1", "bleu2", "bleu3", "bleu4", "rougeL_coco", "cider_d"]
    keys += ["meteor", "s_m"] if java_available() else []
    assert {k: got[k] for k in keys} == {k: expected[k] for k in keys}


def test_a_module_loads_offline_without_the_project(staged, tmp_path):
    code = (
        "import sys, json, evaluate\n"
        f"m = evaluate.load({str(staged['geollava_metrics'])!r})\n"
        "r = m.compute(predictions=['a road was built'], references=[['a road was built']],\n"
        "              change_kinds=[['road_built']])\n"
        "keys = ('rougeL', 'bertscore_f1', 'grounding_f1')\n"
        "loaded = sorted(p for p in ('trainer', 'dataset_builder') if p in sys.modules)\n"
        "print(json.dumps({**{k: r[k] for k in keys}, 'project': loaded}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    env["HF_HOME"] = str(tmp_path / "empty_home")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rougeL"] == 1.0 and result["bertscore_f1"] == pytest.approx(1.0) and result["grounding_f1"] == 1.0
    assert result["project"] == []  # the module ran on its own copies, not on an installed geollava


def test_a_pushed_module_loads_from_its_hub_id(hub_server, staged):
    import evaluate

    from upload.push import main as push_main

    # As the README deploys it: the project's module by name, staged and pushed as a metric Space.
    assert push_main(["metric", "levircc_metrics", "--repo-id", "geo-org/levircc_metrics"]) == 0
    card = SpaceCard.load("geo-org/levircc_metrics", repo_type="space")
    assert {"evaluate", "metric"} <= set(card.data.tags)
    hub = evaluate.load("geo-org/levircc_metrics", download_mode="force_redownload")
    local = evaluate.load(str(staged["levircc_metrics"]))
    kwargs = {"predictions": PREDICTIONS, "references": REFERENCES, "meteor": False}
    assert hub.compute(**kwargs) == local.compute(**kwargs)


def test_the_space_page_computes_with_the_module_beside_it(staged):
    spec = importlib.util.spec_from_file_location("levircc_app", staged["levircc_metrics"] / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)  # builds the page; launching is left to `python app.py`
    got = app.compute(json.dumps(PREDICTIONS), json.dumps(REFERENCES), '{"meteor": false}')
    assert got == app.MODULE.compute(predictions=PREDICTIONS, references=REFERENCES, meteor=False)
    assert "error" in app.compute("not json", "[]", "")
