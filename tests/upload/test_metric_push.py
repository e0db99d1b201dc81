"""A metric pushed as the Hub's metric kind of Space loads with evaluate.load("<org>/<name>") and computes the same."""

import shutil
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, hf_hub_download

from upload.metric_space import WIDGET_GRADIO, WIDGET_REQUIREMENTS, stage_metric
from upload.push import main as push_main


METRIC = '''"""Word overlap: the share of reference words a prediction repeats, and how many predictions are exact."""

import datasets
import evaluate

from .overlap_words import words


class WordOverlap(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of reference words each prediction repeats (mean over rows), and exact matches.",
            citation="",
            inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, lowercase=True):
        shares = []
        for p, r in zip(predictions, references):
            ref = words(r, lowercase)
            shares.append(len(ref & words(p, lowercase)) / len(ref) if ref else 0.0)
        exact = sum(p == r for p, r in zip(predictions, references))
        return {"word_overlap": sum(shares) / len(shares), "exact": exact}
'''
HELPER = """def words(text, lowercase):
    return set((text.lower() if lowercase else text).split())
"""
CARD = "---\ntitle: Word overlap\nlicense: apache-2.0\n---\n\n# Metric Card for Word overlap\n\nA test metric.\n"
PREDICTIONS = ["a new road in the north", "Nothing changed", "trees were cleared"]
REFERENCES = ["a road was built in the north", "nothing changed", "trees were cleared"]
EXPECTED = {"word_overlap": (5 / 7 + 1 + 1) / 3, "exact": 1}  # a, road, in, the, north: 5 of 7


@pytest.fixture()
def module_folder(tmp_path):
    folder = tmp_path / "word_overlap"
    folder.mkdir()
    (folder / "word_overlap.py").write_text(METRIC)
    (folder / "overlap_words.py").write_text(HELPER)
    (folder / "README.md").write_text(CARD)
    (folder / "notes.txt").write_text("not part of the module")
    return folder


def _front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def test_pushed_metric_loads_from_its_hub_id_and_equals_the_local_folder(hub_server, module_folder):
    import evaluate

    assert push_main(["metric", str(module_folder), "--repo-id", "geo-org/word_overlap"]) == 0
    info = HfApi().space_info("geo-org/word_overlap")
    assert info.sdk == "gradio" and {"evaluate", "metric"} <= set(info.tags or info.card_data.get("tags"))
    files = set(HfApi().list_repo_files("geo-org/word_overlap", repo_type="space"))
    assert {"word_overlap.py", "overlap_words.py", "README.md", "app.py", "requirements.txt"} <= files
    assert "notes.txt" not in files
    hub = evaluate.load("geo-org/word_overlap", download_mode="force_redownload")
    local = evaluate.load(str(module_folder))
    got = hub.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert got == local.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert got["exact"] == EXPECTED["exact"] and got["word_overlap"] == pytest.approx(EXPECTED["word_overlap"])
    cased = hub.compute(predictions=PREDICTIONS, references=REFERENCES, lowercase=False)
    assert cased["word_overlap"] < got["word_overlap"]  # "Nothing" no longer matches "nothing": options pass through
    app = Path(hf_hub_download("geo-org/word_overlap", "app.py", repo_type="space")).read_text()
    assert "launch_gradio_widget(module)" in app and 'with_name("word_overlap.py")' in app


def test_staged_metric_card_and_requirements_for_evaluates_widget(module_folder, tmp_path):
    out = stage_metric(module_folder, tmp_path / "staged", repo_id="geo-org/word_overlap")
    meta = _front_matter((out / "README.md").read_text())
    assert meta["tags"] == ["evaluate", "metric"] and meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == WIDGET_GRADIO and meta["title"] == "Word overlap"  # the card's own fields kept
    assert "# Metric Card for Word overlap" in (out / "README.md").read_text()
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert requirements[: len(WIDGET_REQUIREMENTS)] == list(WIDGET_REQUIREMENTS)
    assert "datasets" not in requirements[len(WIDGET_REQUIREMENTS) :]  # already constrained above


def test_a_folder_with_its_own_page_keeps_it_and_its_gradio(module_folder, tmp_path):
    (module_folder / "app.py").write_text("import gradio as gr\n")
    (module_folder / "README.md").write_text(
        "---\ntitle: Word overlap\nsdk: gradio\nsdk_version: 6.31.0\ntags: [remote-sensing]\n---\n# Card\n"
    )
    (module_folder / "requirements.txt").write_text("evaluate>=0.4.6\n")
    out = stage_metric(module_folder, tmp_path / "staged", repo_id="geo-org/word_overlap")
    meta = _front_matter((out / "README.md").read_text())
    assert meta["sdk_version"] == "6.31.0" and meta["tags"] == ["remote-sensing", "evaluate", "metric"]
    assert (out / "app.py").read_text() == "import gradio as gr\n"
    assert (out / "requirements.txt").read_text() == "evaluate>=0.4.6\n"


def test_a_metric_must_be_named_like_its_repo(module_folder, tmp_path, capsys):
    assert push_main(["metric", str(module_folder), "--repo-id", "geo-org/other_name", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "no other_name.py" in err and "overlap_words.py" in err
    (module_folder / "README.md").unlink()
    shutil.rmtree(tmp_path / "staged", ignore_errors=True)
    with pytest.raises(FileNotFoundError, match="metric card"):
        stage_metric(module_folder, tmp_path / "staged", repo_id="geo-org/word_overlap")
