"""Build LEVIR-CC (official layout) into the same Hub-native dataset folder as ``geollava-build``.

    geollava-build-levircc --root data/Levir-CC-dataset --out outputs/levir-cc

One data contract for both model families: ``load_dataset(OUT)`` reads it with no custom code. The layout, the
columns and the report: docs/ccexpert.md "LEVIR-CC → Hub dataset".
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
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from dataset_builder.atomic import write_json, write_parquet
from dataset_builder.images import ImageTooLarge, open_image
from dataset_builder.levircc_card import write_levircc_card
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
        metadata={"help": "Skip (and report) pairs with a missing, unreadable or too large image instead of failing."},
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

    ``" there is no difference ."`` becomes ``"there is no difference"``. Scorers delete "." anyway (CCExpert's
    evaluation removes it, pycocoevalcap's PTB tokenizer drops punctuation), so nothing that is scored changes.
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
    """The ``images`` entries of the captions JSON, checked for the fields and types the build needs.

    Raises:
        ValueError: Naming the file (not JSON, no ``images`` list) or the entry and the field (a malformed entry).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise ValueError(f"{path}: not a LEVIR-CC captions file (not readable JSON: {err})") from err
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: not a LEVIR-CC captions file (expected {{'images': [...]}})")
    for i, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem:
            name = entry.get("filename") if isinstance(entry, dict) and isinstance(entry.get("filename"), str) else "?"
            raise ValueError(f"{path}: images[{i}] ({name}) {problem}")
    return entries


def _entry_problem(entry) -> str | None:
    """What is wrong with one captions entry, or ``None``."""
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not an object"
    for key in ("filename", "split", "sentences"):
        if key not in entry:
            return f"has no {key!r} field"
    filename, split, sentences = entry["filename"], entry["split"], entry["sentences"]
    # a plain file name: the entry names a file under images/{split}/{A,B}/, never a path out of the tree
    if not isinstance(filename, str) or not filename or Path(filename).name != filename or filename in (".", ".."):
        return f"has filename {filename!r}: expected a plain file name"
    if not isinstance(split, str) or split not in SPLITS:
        return f"has split {split!r}"
    if not isinstance(sentences, list) or not all(
        isinstance(s, str) or (isinstance(s, dict) and isinstance(s.get("raw"), str)) for s in sentences
    ):
        return "has 'sentences' that are not a list of strings or of {'raw': str} objects"
    imgid, changeflag = entry.get("imgid"), entry.get("changeflag")
    if imgid is not None and (_as_int(imgid) is None or abs(_as_int(imgid)) >= 2**31):
        return f"has imgid {imgid!r}: expected an integer"
    if changeflag is not None and _as_int(changeflag) not in (0, 1):
        return f"has changeflag {changeflag!r}: expected 0 or 1"
    return None


def _as_int(value) -> int | None:
    """An integer written as a JSON number or as decimal digits (``"1"``), else ``None``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
        return int(value)
    return None


def _check_image(path: Path, name: str) -> None:
    try:
        with open_image(path, name=name) as image:
            image.verify()
    except ImageTooLarge:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many types for a bad file
        raise ValueError(f"{name} is not a readable image: {err}") from err


def make_row(entry: dict, root: Path) -> dict:
    """One dataset row from one checked captions entry (:func:`read_captions`); reads the two PNGs (bytes as they are).

    Raises:
        FileNotFoundError: Naming the pair and the missing file.
        ValueError: Naming the pair, for an unreadable image or a pair without captions;
            :class:`dataset_builder.images.ImageTooLarge` for an image over the pixel or byte limit.
    """
    split, filename = entry["split"], entry["filename"]
    imgid = entry.get("imgid")
    pair = f"pair {Path(filename).stem} (split {split}, imgid {'?' if imgid is None else imgid})"
    references = [clean_caption(s["raw"] if isinstance(s, dict) else s) for s in entry["sentences"]]
    references = [r for r in references if r]
    if not references:
        raise ValueError(f"{pair}: no captions")
    frames = []
    for side in ("A", "B"):
        path = root / "images" / split / side / filename
        if not path.is_file():
            raise FileNotFoundError(f"{pair}: missing image {side} ({path})")
        _check_image(path, f"{pair}: image {side} ({path})")
        frames.append({"bytes": path.read_bytes(), "path": None})
    row_id = Path(filename).stem
    inferred = entry.get("changeflag") is None
    changeflag = infer_changeflag(references) if inferred else _as_int(entry["changeflag"])
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
        "imgid": -1 if imgid is None else _as_int(imgid),
        "gsd": GSD_METRES,
    }


#: Why a pair was skipped (``--skip_missing``): ``build_report.json``'s ``skipped[].kind`` and ``skipped_counts``.
SKIP_KINDS = ("missing_image", "too_many_pixels", "oversize", "unreadable")


def _kind(err: Exception) -> str:
    if isinstance(err, FileNotFoundError):
        return "missing_image"
    if isinstance(err, ImageTooLarge):
        return "too_many_pixels" if err.kind == "pixels" else "oversize"
    return "unreadable"


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


def _write_split(cfg: LevirCCBuildConfig, split: str, entries: list[dict], progress, skipped: list[dict]) -> list:
    """Write one split's shards (as they fill: memory holds one shard of PNG bytes); returns the report's columns.

    A split whose every pair is skipped leaves no shard (``load_dataset`` would find an empty split).
    """
    root, out, feats = Path(cfg.root), Path(cfg.out), features()
    entries = sorted(entries, key=lambda e: (-1 if e.get("imgid") is None else _as_int(e["imgid"]), e["filename"]))
    n = -(-len(entries) // cfg.shard_rows)
    kept, written = [], []
    for i in range(n):
        rows = []
        for entry in entries[i * cfg.shard_rows : (i + 1) * cfg.shard_rows]:
            progress.update()
            try:
                rows.append(make_row(entry, root))
            except (FileNotFoundError, ValueError) as err:
                if not cfg.skip_missing:
                    raise
                where = {"filename": entry["filename"], "split": entry["split"]}
                skipped.append(where | {"reason": str(err), "kind": _kind(err)})
                logger.warning("skipped: %s", err)
        table = Dataset.from_list(rows, features=feats).data.table if rows else feats.arrow_schema.empty_table()
        written.append(write_parquet(table, out / "data" / f"{SPLITS[split]}-{i:05d}-of-{n:05d}.parquet"))
        # Only the columns the report needs are kept.
        kept += [{k: r[k] for k in ("references", "changeflag", "changeflag_inferred")} for r in rows]
    if not kept:
        for path in written:
            path.unlink()
        if entries:
            logger.warning("split %s: every pair was skipped; no shards for it", split)
    return kept


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
    skipped: list[dict] = []
    progress = tqdm(total=len(entries), desc="reading LEVIR-CC", unit="pair")
    rows_by_split = {
        SPLITS[split]: _write_split(cfg, split, [e for e in entries if e["split"] == split], progress, skipped)
        for split in cfg.split_list
    }
    progress.close()
    if not any(rows_by_split.values()):
        why = f" ({len(skipped)} skipped, e.g. {skipped[0]['reason']})" if skipped else ""
        raise ValueError(f"{captions_path}: no pairs in splits {cfg.split_list}{why}")
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
        "skipped_counts": dict(Counter(s["kind"] for s in skipped)),
        "images_not_in_captions": {s: len(v) for s, v in unlisted.items()},
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(out / "build_report.json", report)
    write_levircc_card(out, report)
    return report


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
