"""The LEVIR-CC caption metrics as an ``evaluate`` module (the script of a staged module folder).

    levircc = evaluate.load("outputs/metrics/levircc_metrics")  # the staged folder, or the Hub id it was pushed to
    levircc.compute(predictions=["many houses are built"], references=[["many houses are built", "houses appear"]])

BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and S*m through pycocoevalcap: the numbers of ``geollava-score``, from the same
code, copied beside this script when the folder is staged. See docs/evaluation.md.
"""

import evaluate

from trainer.evaluation.metrics import coco_caption_metrics, evaluate_module_info


_DESCRIPTION = """The change-captioning metrics of LEVIR-CC (RSICCformer, CCExpert): bleu1..bleu4 (option "closest"),
meteor (METEOR 1.5, -l en -norm), rougeL_coco (ROUGE-L, beta 1.2), cider_d (CIDEr-D: sigma 6, clipping) and s_m, the
mean of BLEU-4, METEOR, ROUGE-L and CIDEr-D, computed with pycocoevalcap after its PTB tokenizer (Stanford CoreNLP).
METEOR and the PTB tokenizer need Java: without it, METEOR and S*m are not computed (the reason is in
`unavailable`) and the other metrics use lowercased whitespace tokens with '.' removed, as CCExpert's code does."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str, one caption per row.
    references: list of str, or list of lists of str (LEVIR-CC has 5 per row).
    meteor: bool, run METEOR (starts a JVM, ~5 s; default True).
Returns:
    dict with bleu1..bleu4, meteor, rougeL_coco, cider_d, s_m (raw values; papers report x100), and `unavailable`
    (metric -> why it was not computed) when something was skipped.
Examples:
    >>> levircc = evaluate.load("levircc_metrics")
    >>> scores = levircc.compute(predictions=["a road is built"], references=[["a road is built", "a new road"]])
"""

_CITATION = """@article{liu2022remote,
  title={Remote Sensing Image Change Captioning With Dual-Branch Transformers: A New Method and a Large Scale Dataset},
  author={Liu, Chenyang and Zhao, Rui and Chen, Hao and Zou, Zhengxia and Shi, Zhenwei},
  journal={IEEE Transactions on Geoscience and Remote Sensing},
  volume={60},
  year={2022}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LevirccMetrics(evaluate.Metric):
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and S*m, as ``geollava-score`` computes them."""

    def _info(self):
        return evaluate_module_info(
            _DESCRIPTION,
            _CITATION,
            _KWARGS_DESCRIPTION,
            ["https://github.com/Chen-Yang-Liu/RSICC", "https://github.com/tylin/coco-caption"],
        )

    def _compute(self, predictions, references, meteor: bool = True):
        references = [[r] if isinstance(r, str) else list(r) for r in references]
        values, unavailable, _ = coco_caption_metrics(predictions, references, meteor=meteor)
        return {**values, "unavailable": unavailable} if unavailable else values
