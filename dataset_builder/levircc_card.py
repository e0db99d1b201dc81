"""The dataset card (``README.md``) of a LEVIR-CC build: prose, the split table and the YAML ``load_dataset`` reads."""

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData

from dataset_builder.atomic import write_text
from dataset_builder.card import configs_and_info


CARD_TEMPLATE = """---
{{ card_data }}
---

# LEVIR-CC change captions (Hub layout)

Bi-temporal remote-sensing image pairs (256x256, 0.5 m/px, crops of LEVIR-CD) with 5 change captions each, in the
layout of the GeoLLaVA dataset so that GeoLLaVA models and CCExpert train on it alike.

```python
from datasets import load_dataset
ds = load_dataset("{{ repo_id }}", split="validation")
```

| split | pairs | changed | unchanged |
|---|---|---|---|
{% for s in splits %}| {{ s.name }} | {{ s.pairs }} | {{ s.changed }} | {{ s.unchanged }} |
{% endfor %}

## Columns
- `frames`: the two images as the original **PNG bytes** (A = before, B = after); `image1`/`image2` their paths.
- `references`: the 5 captions, lowercase as released, spaces stripped, the detached final "." removed.
- `conversations`: human = one of GeoLLaVA's prompt templates + `"\\n<video>"`; gpt = the first reference.
  CCExpert's chat template replaces the question with the authors' fixed prompt.
- `changeflag`: 0 = no change, 1 = change; `changeflag_inferred` is true where the captions file lacked it and it was
  inferred (0 iff a majority of the references say no change).
  Given: {{ flags_given }}; inferred: {{ flags_inferred }}.
- `imgid`, `gsd` (0.5 m).

## Scoring
BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and S*m = (BLEU-4 + METEOR + ROUGE-L + CIDEr-D) / 4 over the 5 references
(pycocoevalcap; `geollava-eval`). Choose checkpoints on `validation`, report on `test`.

## Source and license
LEVIR-CC (Liu et al., "Remote Sensing Image Change Captioning With Dual-Branch Transformers", TGRS 2022),
https://github.com/Chen-Yang-Liu/LEVIR-CC-Dataset; see its license before redistributing.
"""


def write_levircc_card(out: Path, report: dict, repo_id: str = "<org>/levir-cc") -> Path:
    """Render ``README.md`` (YAML ``configs`` and ``dataset_info`` read from the shards) into ``out``."""
    configs, infos = configs_and_info(out)
    splits = []
    for split in report["pairs_per_split"]:
        flags = Counter()
        for path in sorted((out / "data").glob(f"{split}-*.parquet")):
            flags.update(pq.read_table(path, columns=["changeflag"]).column("changeflag").to_pylist())
        splits.append({"name": split, "pairs": report["pairs_per_split"][split], "changed": flags[1]})
        splits[-1]["unchanged"] = flags[0]
    total = sum(report["pairs_per_split"].values())
    card_data = DatasetCardData(
        pretty_name="LEVIR-CC change captions",
        language=["en"],
        license="other",
        task_categories=["image-text-to-text"],
        tags=["remote-sensing", "change-captioning", "levir-cc", "ccexpert", "geollava"],
        size_categories=["n<1K" if total < 1000 else "1K<n<10K" if total < 10_000 else "10K<n<100K"],
        configs=configs,
        dataset_info=infos,
    )
    card = DatasetCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        repo_id=repo_id,
        splits=splits,
        flags_given=report["changeflag"]["given"] or "none",
        flags_inferred=report["changeflag"]["inferred"] or "none",
    )
    write_text(out / "README.md", str(card))
    return out / "README.md"
