"""A large push: resumable commits of a few files each, cut midway by the Hub and resumed without sending twice."""

import hashlib
import json
import math
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi

from upload.large_push import JOURNAL_DIR
from upload.push import main as push_main
from upload.staging import staged_files


ROOT = Path(__file__).resolve().parents[2]
PARTS = ["--large-folder-files", "10", "--files-per-commit", "8"]
# Loads every config and split of each repo named on the command line, in a process with a fresh HF_HOME.
LOAD = """
import json, sys
from datasets import load_dataset
out = {}
for repo in sys.argv[1:]:
    for config in ("default", "sample_10k"):
        for split, ds in load_dataset(repo, config).items():
            rows = ds.select_columns(["id", "conversations"]).to_list()
            out[f"{repo}|{config}|{split}"] = {"features": ds.features.to_dict(), "rows": rows}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def dataset_dir(build_small_dataset):
    return build_small_dataset("large")


def _log(url: str) -> list[str]:
    return json.loads(urllib.request.urlopen(f"{url}/_log").read())


def _push(folder: Path, repo_id: str, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "upload.push", "dataset", str(folder), "--repo-id", repo_id, *flags]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)


def _uploaded(lines: list[str]) -> list[str]:
    """The LFS objects received (200) in these log lines."""
    return [line.split()[1].split("?")[0].removeprefix("/_lfs/") for line in lines if line.startswith("PUT /_lfs/")]


def _ok(lines: list[str]) -> list[str]:
    return [line for line in lines if line.endswith("-> 200")]


def _lfs_files(folder: Path) -> dict[str, str]:
    return {
        p.as_posix(): hashlib.sha256((folder / p).read_bytes()).hexdigest()
        for p in staged_files("dataset", folder)
        if p.suffix in (".parquet", ".mp4")
    }


@pytest.mark.parametrize("fault", [{"fail_lfs_put_after": 12}, {"fail_commit_after": 1}])
def test_interrupted_large_push_resumes_without_sending_twice(hub_server, dataset_dir, fault):
    repo_id = f"geo-org/large-{next(iter(fault)).replace('_', '-')}"
    staged = [p.as_posix() for p in staged_files("dataset", dataset_dir)]
    lfs = _lfs_files(dataset_dir)
    httpx.post(f"{hub_server}/_faults", json=fault).raise_for_status()
    start = len(_log(hub_server))
    first = _push(dataset_dir, repo_id, *PARTS)
    assert first.returncode == 1 and "push failed" in first.stderr, first.stderr
    first_log = _log(hub_server)[start:]
    api = HfApi()
    assert len(api.list_repo_commits(repo_id, repo_type="dataset")) == 2  # the repo's first commit + part 1

    start = len(_log(hub_server))
    second = _push(dataset_dir, repo_id, *PARTS)
    assert second.returncode == 0, second.stderr
    second_log = _log(hub_server)[start:]
    assert "8 files committed by an earlier run" in second.stdout
    # Nothing sent twice: every LFS object went up exactly once over the two runs.
    sent_first, sent_second = _uploaded(_ok(first_log)), _uploaded(_ok(second_log))
    assert sent_first and sent_second
    assert sorted(sent_first + sent_second) == sorted(lfs.values())
    # The committed part was neither read nor asked about again: one preupload per remaining part.
    preuploads = [line for line in second_log if "/preupload/" in line]
    assert len(preuploads) == math.ceil((len(staged) - 8) / 8)
    commits = api.list_repo_commits(repo_id, repo_type="dataset")
    assert len(commits) == 1 + math.ceil(len(staged) / 8)
    infos = {i.path: i for i in api.get_paths_info(repo_id, staged, repo_type="dataset")}
    assert set(infos) == set(staged)
    assert {p: infos[p].lfs.sha256 for p in lfs} == lfs
    assert not any(f.startswith(".cache") for f in api.list_repo_files(repo_id, repo_type="dataset"))
    # The card (and its configs) comes with the last commit, once the data is complete.
    assert not api.file_exists(repo_id, "README.md", repo_type="dataset", revision=commits[1].commit_id)
    assert list((dataset_dir / JOURNAL_DIR).rglob("commit-*.json"))


def test_a_push_in_parts_loads_like_a_one_commit_push(hub_server, dataset_dir, tmp_path):
    assert push_main(["dataset", str(dataset_dir), "--repo-id", "geo-org/in-one"]) == 0
    assert push_main(["dataset", str(dataset_dir), "--repo-id", "geo-org/in-parts", *PARTS]) == 0
    assert len(HfApi().list_repo_commits("geo-org/in-one", repo_type="dataset")) == 2
    assert len(HfApi().list_repo_commits("geo-org/in-parts", repo_type="dataset")) > 2
    env = {**os.environ, "HF_HOME": str(tmp_path / "fresh_hf_home")}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD, "geo-org/in-one", "geo-org/in-parts"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    one = {k.split("|", 1)[1]: v for k, v in loaded.items() if k.startswith("geo-org/in-one|")}
    parts = {k.split("|", 1)[1]: v for k, v in loaded.items() if k.startswith("geo-org/in-parts|")}
    assert {"default|train", "default|test", "sample_10k|train"} <= set(one)
    assert parts == one
    assert all(v["rows"] for v in one.values())


def test_records_of_commits_the_repo_lost_are_ignored(hub_server, tmp_path, capsys):
    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    for i in range(12):
        (folder / "data" / f"train-{i:05d}-of-00012.parquet").write_bytes(os.urandom(300))
    flags = ["--large-folder-files", "5", "--files-per-commit", "5"]
    assert push_main(["dataset", str(folder), "--repo-id", "geo-org/lost", *flags]) == 0
    HfApi().delete_repo("geo-org/lost", repo_type="dataset")
    capsys.readouterr()
    assert push_main(["dataset", str(folder), "--repo-id", "geo-org/lost", *flags]) == 0
    assert "3 parts pushed by this run, 0 files committed by an earlier run" in capsys.readouterr().out
    assert len(HfApi().list_repo_files("geo-org/lost", repo_type="dataset")) == 12 + 1  # + .gitattributes
    # A third run finds everything committed: no commit, nothing read.
    assert push_main(["dataset", str(folder), "--repo-id", "geo-org/lost", *flags]) == 0
    assert "0 parts pushed by this run, 12 files committed by an earlier run" in capsys.readouterr().out
    assert len(HfApi().list_repo_commits("geo-org/lost", repo_type="dataset")) == 1 + 3


def test_the_plan_says_when_a_push_goes_in_parts(tmp_path, capsys):
    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    for i in range(3):
        (folder / "data" / f"train-{i}.parquet").write_bytes(b"x" * 100)
    assert push_main(["dataset", str(folder), "--repo-id", "geo-org/x", "--dry-run"]) == 0
    assert "as one commit" in capsys.readouterr().out
    assert (
        push_main(["dataset", str(folder), "--repo-id", "geo-org/x", "--dry-run", "--large-folder-bytes", "250"]) == 0
    )
    assert "in resumable commits of 100 files" in capsys.readouterr().out
    assert push_main(["dataset", str(folder), "--repo-id", "geo-org/x", "--files-per-commit", "0"]) == 1
    assert "files_per_commit: 0 must be at least 1" in capsys.readouterr().err
