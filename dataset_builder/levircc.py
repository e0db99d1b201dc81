r"""Build LEVIR-CC (official layout) into the same Hub-native dataset folder as ``geollava-build``.

    geollava-build-levircc --root data/Levir-CC-dataset --out outputs/levir-cc

Reads ``LevirCCcaptions.json`` (Karpathy/COCO style: ``images[] = {filepath, filename, imgid, split, sentences[5],
changeflag}``) and ``images/{train,val,test}/{A,B}/<filename>``, and writes ``data/{split}-NNNNN-of-NNNNN.parquet``
(splits ``train``, ``validation``, ``test``), ``README.md`` (YAML ``configs`` + ``dataset_info``) and
``build_report.json``. ``load_dataset(OUT)`` reads it with no custom code.

One data contract for both model families (docs/ccexpert.md): ``frames`` (the original PNG bytes, A then B),
``references`` (the 5 captions), ``conversations`` whose human turn is a GeoLLaVA prompt template + ``"\\n<video>"``
and whose answer is the first reference; CCExpert's chat template puts its own fixed prompt in place of the question.
"""

import json
import logging
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import Dataset, Features, Image, List, Value
from huggingface_hub import DatasetCard, DatasetCardData
from PIL import Image as PILImage
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from dataset_builder.atomic import write_json, write_parquet, write_text
from dataset_builder.card import configs_and_info
from dataset_builder.prompts import choose_template, human_turn


logger = logging.getLogger(__name__)

#: Official split names in the JSON and the tree, and the Hub split names they become.
SPLITS = {"train": "train", "val": "validation", "test": "test"}
CAPTIONS_FILE = "LevirCCcaptions.json"
FORMAT = "levir-cc"
MARKER = ".geollava_levircc_build"
GSD_METRES = 0.5

#: Wordings of LEVIR-CC's no-change captions ("there is no difference", "the scene is the same as before", ...).
NO_CHANGE_PATTERN = re.compile(
    r"\b(no (obvious |significant |apparent |visible )?(difference|change)s?"
    r"|nothing (has )?changed|(has|have) not changed|unchanged|no modification"
    r"|(seem|look|are|is|remain|remains|keep|keeps)( almost| exactly| basically| just)? (the )?(same|identical)"
    r"|same as before)\b"
)


@dataclass
class LevirCCBuildConfig:
    """Command-line options of ``geollava-build-levircc``."""

    root: str = field(metadata={"help": f"LEVIR-CC root: {CAPTIONS_FILE} and images/{{train,val,test}}/{{A,B}}/."})
    out: str = field(metadata={"help": "Output folder (Hub dataset layout); empty, or an earlier LEVIR-CC build."})
    splits: str = field(default="train,val,test", metadata={"help": "Comma-separated official splits to build."})
    captions_file: str = field(default=CAPTIONS_FILE, metadata={"help": "Captions JSON, relative to --root."})
    shard_rows: int = field(default=1000, metadata={"help": "Rows per Parquet shard."})
    skip_missing: bool = field(
        default=False,
        metadata={"help": "Skip (and report) pairs with a missing or unreadable image instead of failing."},
    )

    def __post_init__(self):
        bad = [s for s in self.split_list if s not in SPLITS]
        if bad or not self.split_list:
            raise ValueError(f"--splits {self.splits!r}: choose from {sorted(SPLITS)}")
        if self.shard_rows < 1:
            raise ValueError(f"--shard_rows {self.shard_rows}: must be >= 1")

    @property
    def split_list(self) -> list[str]:
        """The official splits to read."""
        return [s.strip() for s in self.splits.split(",") if s.strip()]


def features() -> Features:
    """The row schema of a LEVIR-CC build (docs/CONTRACTS.md §2, LEVIR-CC columns)."""
    return Features(
        {
            "id": Value("string"),
            "split": Value("string"),
            "image1": Value("string"),
            "image2": Value("string"),
            "frames": List(Image()),
            "conversations": List({"from": Value("string"), "value": Value("string")}),
            "prompt_template_id": Value("int32"),
            "references": List(Value("string")),
            "changeflag": Value("int32"),
            "changeflag_inferred": Value("bool"),
            "imgid": Value("int32"),
            "gsd": Value("float32"),
        }
    )


def clean_caption(raw: str) -> str:
    """A LEVIR-CC caption as stored: lowercase as released, spaces stripped and collapsed, the detached final "." gone.

    ``" there is no difference ."`` becomes ``"there is no difference"``. Scorers delete "." anyway (§2.2 of the
    reference notes), so nothing that is scored changes.
    """
    words = raw.split()
    while words and words[-1] == ".":
        words.pop()
    return " ".join(words)


def is_no_change_caption(caption: str) -> bool:
    """Whether a caption says that nothing changed (:data:`NO_CHANGE_PATTERN`)."""
    return NO_CHANGE_PATTERN.search(caption.lower()) is not None


def infer_changeflag(references: list[str]) -> int:
    """``changeflag`` from the captions when the JSON lacks it: 0 (no change) iff most references say no change.

    LEVIR-CC's no-change pairs carry 5 no-change wordings and changed pairs none, so a majority is robust to one odd
    caption.
    """
    votes = sum(is_no_change_caption(r) for r in references)
    return 0 if 2 * votes > len(references) else 1


def read_captions(path: Path) -> list[dict]:
    """The ``images`` entries of the captions JSON, checked for the fields the build needs.

    Raises:
        ValueError: Naming the entry and the field, if an entry is malformed.
    """
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a LEVIR-CC captions file (expected {{'images': [...]}}): {err}") from err
    for i, entry in enumerate(entries):
        for key in ("filename", "split", "sentences"):
            if key not in entry:
                raise ValueError(f"{path}: images[{i}] ({entry.get('filename', '?')}) has no {key!r} field")
        if entry["split"] not in SPLITS:
            raise ValueError(f"{path}: images[{i}] ({entry['filename']}) has split {entry['split']!r}")
    return entries


def _check_image(path: Path) -> None:
    with PILImage.open(path) as image:
        image.verify()


def make_row(entry: dict, root: Path) -> dict:
    """One dataset row from one captions entry; reads the two PNGs (bytes kept as they are).

    Raises:
        FileNotFoundError: Naming the pair and the missing file.
        ValueError: Naming the pair, for an unreadable image or a pair without captions.
    """
    split, filename = entry["split"], entry["filename"]
    pair = f"pair {Path(filename).stem} (split {split}, imgid {entry.get('imgid', '?')})"
    references = [clean_caption(s["raw"] if isinstance(s, dict) else s) for s in entry["sentences"]]
    references = [r for r in references if r]
    if not references:
        raise ValueError(f"{pair}: no captions")
    frames = []
    for side in ("A", "B"):
        path = root / "images" / split / side / filename
        if not path.is_file():
            raise FileNotFoundError(f"{pair}: missing image {side} ({path})")
        try:
            _check_image(path)
        except Exception as err:  # noqa: BLE001 - PIL raises many types for a bad file
            raise ValueError(f"{pair}: image {side} ({path}) is not a readable image: {err}") from err
        frames.append({"bytes": path.read_bytes(), "path": None})
    row_id = Path(filename).stem
    inferred = "changeflag" not in entry or entry["changeflag"] is None
    changeflag = infer_changeflag(references) if inferred else int(entry["changeflag"])
    if changeflag not in (0, 1):
        raise ValueError(f"{pair}: changeflag {entry['changeflag']!r} is not 0 or 1")
    template_id = choose_template(row_id)
    return {
        "id": row_id,
        "split": SPLITS[split],
        "image1": f"images/{split}/A/{filename}",
        "image2": f"images/{split}/B/{filename}",
        "frames": frames,
        "conversations": [
            {"from": "human", "value": human_turn(template_id)},
            {"from": "gpt", "value": references[0]},
        ],
        "prompt_template_id": template_id,
        "references": references,
        "changeflag": changeflag,
        "changeflag_inferred": inferred,
        "imgid": int(entry.get("imgid", -1)),
        "gsd": GSD_METRES,
    }


def _prepare_out(out: Path) -> None:
    """Clear an earlier LEVIR-CC build (finished or not); refuse any other non-empty folder."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise FileExistsError(f"{out} is not empty and is no earlier LEVIR-CC build: choose an empty --out")
        for name in ("data", "README.md", "build_report.json"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(FORMAT + "\n")


def _write_shard(out: Path, name: str, rows: list[dict], feats: Features) -> None:
    write_parquet(Dataset.from_list(rows, features=feats).data.table, out / "data" / name)


def build_levircc(cfg: LevirCCBuildConfig) -> dict:
    """Build the dataset folder; return the build report (also written to ``build_report.json``).

    Raises:
        FileNotFoundError: No captions file, or (without ``skip_missing``) a pair's image is missing.
        ValueError: A malformed captions file, or (without ``skip_missing``) an unreadable image.
    """
    start = time.perf_counter()
    root, out = Path(cfg.root), Path(cfg.out)
    captions_path = root / cfg.captions_file
    if not captions_path.is_file():
        raise FileNotFoundError(f"{captions_path}: no captions file (--root must hold {cfg.captions_file})")
    entries = [e for e in read_captions(captions_path) if e["split"] in cfg.split_list]
    _prepare_out(out)
    feats = features()
    by_split: dict[str, list[dict]] = {s: [] for s in cfg.split_list}
    for entry in entries:
        by_split[entry["split"]].append(entry)
    rows_by_split: dict[str, list[dict]] = {SPLITS[s]: [] for s in cfg.split_list}
    skipped: list[dict] = []
    progress = tqdm(total=len(entries), desc="reading LEVIR-CC", unit="pair")
    for split, split_entries in by_split.items():
        split_entries.sort(key=lambda e: (int(e.get("imgid", -1)), e["filename"]))
        n = -(-len(split_entries) // cfg.shard_rows)
        # Shards are written as they fill, so memory holds one shard of PNG bytes, not the dataset.
        for i in range(n):
            rows = []
            for entry in split_entries[i * cfg.shard_rows : (i + 1) * cfg.shard_rows]:
                progress.update()
                try:
                    rows.append(make_row(entry, root))
                except (FileNotFoundError, ValueError) as err:
                    if not cfg.skip_missing:
                        raise
                    skipped.append({"filename": entry["filename"], "split": entry["split"], "reason": str(err)})
                    logger.warning("skipped: %s", err)
            _write_shard(out, f"{SPLITS[split]}-{i:05d}-of-{n:05d}.parquet", rows, feats)
            # Only the columns the report needs are kept.
            rows_by_split[SPLITS[split]] += [
                {k: r[k] for k in ("references", "changeflag", "changeflag_inferred")} for r in rows
            ]
    progress.close()
    if not any(rows_by_split.values()):
        raise ValueError(f"{captions_path}: no pairs in splits {cfg.split_list}")
    listed = {(e["split"], e["filename"]) for e in entries}
    unlisted = {
        split: sorted(p.name for p in (root / "images" / split / "A").glob("*.png") if (split, p.name) not in listed)
        for split in cfg.split_list
    }
    all_rows = [r for rows in rows_by_split.values() for r in rows]
    report = {
        "format": FORMAT,
        "options": asdict(cfg),
        "frames": "PNG bytes of the original files, unchanged (A, then B)",
        "pairs_per_split": {s: len(r) for s, r in rows_by_split.items()},
        "references_per_pair": dict(Counter(len(r["references"]) for r in all_rows)),
        "changeflag": {
            "given": dict(Counter(str(r["changeflag"]) for r in all_rows if not r["changeflag_inferred"])),
            "inferred": dict(Counter(str(r["changeflag"]) for r in all_rows if r["changeflag_inferred"])),
        },
        "skipped": skipped,
        "images_not_in_captions": {s: len(v) for s, v in unlisted.items()},
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(out / "build_report.json", report)
    write_levircc_card(out, report)
    return report


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
    import pyarrow.parquet as pq

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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-build-levircc``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    (cfg,) = HfArgumentParser(LevirCCBuildConfig).parse_args_into_dataclasses(args=argv)
    try:
        report = build_levircc(cfg)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"geollava-build-levircc: {err}", file=sys.stderr)
        return 1
    print(
        f"built {cfg.out}: {report['pairs_per_split']} pairs, changeflag given {report['changeflag']['given']}, "
        f"inferred {report['changeflag']['inferred']}, {len(report['skipped'])} skipped, in {report['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
