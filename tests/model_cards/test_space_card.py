"""geollava-card space: the Space README front matter the Hub reads."""

import gradio
import pytest
import yaml

from model_cards.render import main as card_main
from model_cards.validate import validate_card


def test_space_card_front_matter(tmp_path):
    argv = ["space", str(tmp_path), "--repo-id", "geo-org/demo", "--model-repo-id", "geo-org/lora"]
    assert card_main([*argv, "--dataset-repo-id", "geo-org/geollava"]) == 0
    text = (tmp_path / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ and meta["app_file"] == "app.py"
    assert meta["models"] == ["geo-org/lora"] and meta["datasets"] == ["geo-org/geollava"]
    assert meta["short_description"] and len(meta["short_description"]) <= 60
    assert isinstance(meta["python_version"], str)
    assert validate_card(text, "space")["sdk"] == "gradio"
    assert "geo-org/lora" in text.split("---\n", 2)[2]


@pytest.mark.parametrize(
    ("front", "field"),
    [
        ("sdk: flask\napp_file: app.py", "sdk"),
        ("sdk: gradio", "app_file"),
        ("sdk: gradio\napp_file: a.py\nmodels: 3", "models"),
    ],
)
def test_validate_rejects_bad_space_cards(front, field):
    with pytest.raises(ValueError, match=field):
        validate_card(f"---\n{front}\n---\n", "space")
