"""The project's downloads stay in their folder whatever paths a repo's tree holds (a Hub serving a hostile tree).

The loopback Hub's test-only switch (`--allow-hostile-trees`) commits paths the Hub refuses: `..` segments, absolute
paths, backslashes. Against it: the adapter download (`trainer.models.loading.adapter_folder`), the dataset
(`load_dataset` in a fresh HF_HOME) and the Space pull-back (`snapshot_download(repo_type="space")`, into the cache
and into a folder). Each must fail with a clear error or load only the good files, and write nothing outside its
target folder.
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi, snapshot_download

from upload.loopback import serve_hub


ROOT = Path(__file__).resolve().parents[2]
UID = uuid.uuid4().hex[:10]
# Runs one download in a fresh process (HF_ENDPOINT and HF_HOME are read at import); prints the outcome as JSON.
DOWNLOAD = """
import json, sys
kind, repo = sys.argv[1], sys.argv[2]
try:
    if kind == "adapter":
        from trainer.models.loading import adapter_folder
        out = str(adapter_folder(repo))
    else:
        from datasets import load_dataset
        out = sorted(load_dataset(repo, split="train")["id"])
    print(json.dumps({"ok": True, "out": out}))
except Exception as err:
    print(json.dumps({"ok": False, "error": f"{type(err).__name__}: {err}"}))
"""


def hostile_paths(tmp_path: Path, stem: str) -> list[str]:
    """Paths that land outside any folder under ``tmp_path`` if joined naively; every name carries ``UID``."""
    up = "../" * 14
    return [
        f"{up}{stem}-{UID}-dotdot.txt",
        f"sub/{up}../{stem}-{UID}-mid.txt",
        f"data/{up}{stem}-{UID}-escape.parquet",
        f"{tmp_path}/{stem}-{UID}-absolute.txt",
        "..\\" * 14 + f"{stem}-{UID}-backslash.txt",
    ]


def escaped(tmp_path: Path, target: Path) -> list[str]:
    """Files carrying ``UID`` outside ``target``: anywhere under ``tmp_path`` or in one of its ancestors."""
    inside = [p for p in tmp_path.rglob(f"*{UID}*") if target not in p.parents]
    above = [p for a in tmp_path.parents if a.is_dir() for p in a.glob(f"*{UID}*")]
    return [str(p) for p in inside + above]


@pytest.fixture(scope="module")
def hostile_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    with serve_hub(root / "storage", hostile_trees=True) as url:
        yield url, root


def _plant(url: str, repo_type: str, repo_id: str, files: dict[str, str]) -> None:
    resp = httpx.post(f"{url}/_hostile", json={"repo_type": repo_type, "repo_id": repo_id, "files": files})
    resp.raise_for_status()


def _deep(tmp_path: Path) -> Path:
    deep = tmp_path.joinpath(*[f"n{i}" for i in range(10)])
    deep.mkdir(parents=True)
    return deep


def _run(url: str, deep: Path, kind: str, repo: str) -> dict:
    (deep / "cwd").mkdir()
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HOME": str(deep / "hf_home"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", DOWNLOAD, kind, repo], capture_output=True, text=True, env=env, cwd=deep / "cwd"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any((deep / "cwd").iterdir())
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_switch_is_off_by_default(hub_server):
    resp = httpx.post(f"{hub_server}/_hostile", json={"repo_id": "geo-org/x", "files": {"../x": "x"}})
    assert resp.status_code == 404
    assert not HfApi().repo_exists("geo-org/x")


def test_the_hostile_tree_is_served(hostile_hub, tmp_path):
    url, _ = hostile_hub
    paths = hostile_paths(tmp_path, "listed")
    _plant(url, "model", "geo-org/listed", dict.fromkeys(paths, "evil"))
    assert set(paths) <= set(HfApi(endpoint=url).list_repo_files("geo-org/listed"))


def test_adapter_download_refuses_the_tree(hostile_hub, tmp_path):
    url, _ = hostile_hub
    _plant(
        url,
        "model",
        "geo-org/evil-adapter",
        {"adapter_config.json": "{}", **dict.fromkeys(hostile_paths(tmp_path, "adapter"), "evil")},
    )
    deep = _deep(tmp_path)
    outcome = _run(url, deep, "adapter", "geo-org/evil-adapter")
    assert not outcome["ok"] and "Invalid filename" in outcome["error"], outcome
    assert escaped(tmp_path, deep / "hf_home") == []


def test_dataset_load_stays_in_hf_home(hostile_hub, tmp_path):
    url, _ = hostile_hub
    api = HfApi(endpoint=url)
    api.create_repo("geo-org/evil-dataset", repo_type="dataset", exist_ok=True)
    shard = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"id": ["a", "b"]}), shard)
    api.upload_file(
        path_or_fileobj=shard,
        path_in_repo="data/train-00000-of-00001.parquet",
        repo_id="geo-org/evil-dataset",
        repo_type="dataset",
    )
    _plant(url, "dataset", "geo-org/evil-dataset", dict.fromkeys(hostile_paths(tmp_path, "train"), "evil"))
    deep = _deep(tmp_path)
    outcome = _run(url, deep, "dataset", "geo-org/evil-dataset")
    assert outcome == {"ok": True, "out": ["a", "b"]} or "Invalid filename" in outcome.get("error", ""), outcome
    assert escaped(tmp_path, deep / "hf_home") == []


@pytest.mark.parametrize("into", ["cache_dir", "local_dir"])
def test_space_pull_back_refuses_the_tree(hostile_hub, tmp_path, into):
    url, _ = hostile_hub
    repo = f"geo-org/evil-space-{into.replace('_', '-')}"
    _plant(url, "space", repo, {"app.py": "print('hi')\n", **dict.fromkeys(hostile_paths(tmp_path, "space"), "evil")})
    target = _deep(tmp_path) / "pulled"
    with pytest.raises(ValueError, match="Invalid filename"):
        snapshot_download(repo, repo_type="space", endpoint=url, **{into: str(target)})
    assert escaped(tmp_path, target) == []
