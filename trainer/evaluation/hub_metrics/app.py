"""The page of a metric module's Space: paste predictions and references as JSON, get the scores (python app.py).

Staged beside the module's script by ``hub_metrics.staging.stage_metric_module``; it loads that script from its own
folder, so the page needs nothing from the network. See docs/evaluation.md.
"""

import json
from pathlib import Path

import evaluate
import gradio as gr


HERE = Path(__file__).resolve().parent
#: The module scripts this page can serve; the staged folder holds exactly one of them.
MODULE_SCRIPTS = ("geollava_metrics.py", "levircc_metrics.py")
SCRIPT = next((HERE / name for name in MODULE_SCRIPTS if (HERE / name).is_file()), None)
if SCRIPT is None:
    raise FileNotFoundError(f"{HERE}: no metric module script here ({', '.join(MODULE_SCRIPTS)})")
MODULE = evaluate.load(str(SCRIPT))
EXAMPLE_PREDICTIONS = '["a new road was built in the north", "nothing has changed"]'
EXAMPLE_REFERENCES = '[["a road was built in the north"], ["no change is visible", "the scene is the same"]]'


def compute(predictions: str, references: str, options: str) -> dict:
    """The module's scores for JSON inputs (``options``: a JSON object of the module's other arguments)."""
    try:
        kwargs = json.loads(options) if options.strip() else {}
        return MODULE.compute(predictions=json.loads(predictions), references=json.loads(references), **kwargs)
    except (ValueError, TypeError) as err:
        return {"error": str(err)}


with gr.Blocks(title=MODULE.name) as demo:
    gr.Markdown(f"# {MODULE.name}\n\n{MODULE.description}")
    predictions = gr.Textbox(label="predictions (JSON list of strings)", value=EXAMPLE_PREDICTIONS)
    references = gr.Textbox(label="references (JSON list of lists of strings)", value=EXAMPLE_REFERENCES)
    options = gr.Textbox(label='other arguments (JSON object, e.g. {"meteor": false})', value="")
    scores = gr.JSON(label="scores")
    gr.Button("Compute").click(compute, [predictions, references, options], scores, api_name="compute")

if __name__ == "__main__":
    demo.launch()
