"""geollava-hub on its own: the Hub's error shapes, Range, branches, private repos, faults, persistence on disk."""

import os

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from upload.loopback import free_port, serve_hub


PAYLOAD = bytes(range(256)) * 40  # binary -> an LFS file


@pytest.fixture(scope="module")
def repo(hub_server, tmp_path_factory):
    api = HfApi()
    api.create_repo("geo-org/server-test", exist_ok=True)
    folder = tmp_path_factory.mktemp("files")
    (folder / "weights.bin").write_bytes(PAYLOAD)
    (folder / "notes.txt").write_text("hello\n")
    api.upload_folder(folder_path=str(folder), repo_id="geo-org/server-test", commit_message="two files")
    return "geo-org/server-test"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/api/models/geo-org/absent", "RepoNotFound"),
        ("/api/models/geo-org/server-test/revision/no-such-branch", "RevisionNotFound"),
        ("/geo-org/server-test/resolve/main/absent.txt", "EntryNotFound"),
        ("/geo-org/server-test/resolve/no-such-branch/notes.txt", "RevisionNotFound"),
        ("/datasets/geo-org/server-test/resolve/main/notes.txt", "RepoNotFound"),  # a model repo, asked as a dataset
    ],
)
def test_hub_error_shapes(hub_server, repo, path, code):
    resp = httpx.get(hub_server + path)
    assert resp.status_code == 404
    assert resp.headers["X-Error-Code"] == code


def test_clients_raise_the_hub_errors(hub_server, repo, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("geo-org/absent")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "notes.txt", revision="no-such-branch", cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "absent.txt", cache_dir=tmp_path)


def test_lfs_and_regular_files_download_byte_exact(hub_server, repo, tmp_path):
    infos = {i.path: i for i in HfApi().get_paths_info(repo, ["weights.bin", "notes.txt"])}
    assert infos["weights.bin"].lfs is not None and infos["notes.txt"].lfs is None
    with open(hf_hub_download(repo, "weights.bin", cache_dir=tmp_path), "rb") as fh:
        assert fh.read() == PAYLOAD


def test_range_request(hub_server, repo):
    resp = httpx.get(f"{hub_server}/{repo}/resolve/main/weights.bin", headers={"Range": "bytes=300-309"})
    assert resp.status_code == 206
    assert resp.content == PAYLOAD[300:310]


def test_branch_from_main_then_diverge(hub_server, repo, tmp_path):
    api = HfApi()
    api.create_branch(repo, branch="dev")
    api.upload_file(path_or_fileobj=b"dev only\n", path_in_repo="dev.txt", repo_id=repo, revision="dev")
    assert "dev.txt" in api.list_repo_files(repo, revision="dev")
    assert "dev.txt" not in api.list_repo_files(repo, revision="main")
    assert "notes.txt" in api.list_repo_files(repo, revision="dev")  # branched from main
    assert len(api.list_repo_commits(repo, revision="dev")) == len(api.list_repo_commits(repo)) + 1


def test_private_repo_is_reported_private(hub_server):
    api = HfApi()
    api.create_repo("geo-org/secret", repo_type="dataset", private=True, exist_ok=True)
    assert api.dataset_info("geo-org/secret").private is True
    api.create_repo("geo-org/open", repo_type="dataset", exist_ok=True)
    assert api.dataset_info("geo-org/open").private is False


def test_injected_lfs_fault_fails_the_upload_and_leaves_no_commit(hub_server, tmp_path):
    api = HfApi()
    api.create_repo("geo-org/faulty", exist_ok=True)
    (tmp_path / "w.bin").write_bytes(os.urandom(2048))
    httpx.post(f"{hub_server}/_faults", json={"fail_lfs_put_after": 0}).raise_for_status()
    with pytest.raises(Exception, match="Error while uploading"):
        api.upload_folder(folder_path=str(tmp_path), repo_id="geo-org/faulty")
    assert len(api.list_repo_commits("geo-org/faulty")) == 1  # the repo's initial commit only
    api.upload_folder(folder_path=str(tmp_path), repo_id="geo-org/faulty")  # the fault fired once
    assert "w.bin" in api.list_repo_files("geo-org/faulty")


def test_repos_survive_a_restart(tmp_path):
    storage, port = tmp_path / "storage", free_port()
    with serve_hub(storage, port=port) as url:
        api = HfApi(endpoint=url)
        api.create_repo("geo-org/kept", repo_type="dataset")
        api.create_branch("geo-org/kept", branch="v1", repo_type="dataset")
        api.upload_file(
            path_or_fileobj=PAYLOAD, path_in_repo="data/x.bin", repo_id="geo-org/kept", repo_type="dataset"
        )
        before = api.list_repo_commits("geo-org/kept", repo_type="dataset")
    with serve_hub(storage, port=port) as url:
        api = HfApi(endpoint=url)
        assert [c.commit_id for c in api.list_repo_commits("geo-org/kept", repo_type="dataset")] == [
            c.commit_id for c in before
        ]
        assert {b.name for b in api.list_repo_refs("geo-org/kept", repo_type="dataset").branches} == {"main", "v1"}
        path = hf_hub_download(
            "geo-org/kept", "data/x.bin", repo_type="dataset", endpoint=url, cache_dir=tmp_path / "c"
        )
        with open(path, "rb") as fh:
            assert fh.read() == PAYLOAD


def test_tree_pages_like_the_hub(hub_server):
    from huggingface_hub import CommitOperationAdd

    api = HfApi()
    api.create_repo("geo-org/many-files", repo_type="dataset", exist_ok=True)
    operations = [CommitOperationAdd(f"videos/{i:05d}.txt", f"{i}\n".encode()) for i in range(1005)]
    api.create_commit("geo-org/many-files", operations=operations, commit_message="1005", repo_type="dataset")
    start = len(httpx.get(f"{hub_server}/_log").json())
    files = api.list_repo_files("geo-org/many-files", repo_type="dataset")
    assert len(files) == len(set(files)) == 1005 + 1  # + .gitattributes
    pages = [line for line in httpx.get(f"{hub_server}/_log").json()[start:] if "/tree/" in line]
    assert len(pages) == 2 and "cursor=1000" in pages[1]


def test_unchanged_lfs_files_are_not_committed_again(hub_server, repo):
    api = HfApi()
    before = len(api.list_repo_commits(repo))
    api.upload_file(path_or_fileobj=PAYLOAD, path_in_repo="weights.bin", repo_id=repo)  # same bytes again
    assert len(api.list_repo_commits(repo)) == before
