"""geollava-hub refuses what the Hub refuses: bad repo ids, paths, branches and object ids, with 400 + X-Error-Code."""

import base64
import hashlib
import json

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import BadRequestError


REPO = "geo-org/validation"


@pytest.fixture(scope="module")
def api(hub_server):
    api = HfApi()
    api.create_repo(REPO, exist_ok=True)
    return api


def _commit(url: str, *operations: dict, repo: str = REPO) -> httpx.Response:
    lines = [{"key": "header", "value": {"summary": "raw"}}, *operations]
    return httpx.post(f"{url}/api/models/{repo}/commit/main", content="\n".join(json.dumps(x) for x in lines))


def _file(path: str) -> dict:
    return {"key": "file", "value": {"path": path, "content": base64.b64encode(b"x").decode(), "encoding": "base64"}}


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("a\\b.txt", "backslash"),
        ("a//b.txt", "empty segment"),
        ("bad\x01name.txt", "control character"),
        ("tab\tname.txt", "control character"),
        ("x" * 256 + ".txt", "longer than 255 bytes"),
        ("abc/" * 1100 + "f.txt", "longer than 4096 bytes"),
    ],
)
def test_the_client_gets_a_clear_error_for_a_refused_path(api, path, reason):
    commits = len(api.list_repo_commits(REPO))
    with pytest.raises(BadRequestError, match=reason) as err:
        api.upload_file(path_or_fileobj=b"data", path_in_repo=path, repo_id=REPO)
    assert err.value.response.status_code == 400
    assert err.value.response.headers["X-Error-Code"] == "InvalidPath"
    assert len(api.list_repo_commits(REPO)) == commits
    assert path not in api.list_repo_files(REPO)


def test_unusual_but_valid_paths_round_trip(api, tmp_path):
    for path in ("données/été 2020.txt", "100% sure.txt", "a-b_c.d/e+f=g.txt"):
        api.upload_file(path_or_fileobj=path.encode(), path_in_repo=path, repo_id=REPO)
        with open(hf_hub_download(REPO, path, cache_dir=tmp_path), "rb") as fh:
            assert fh.read() == path.encode()


@pytest.mark.parametrize(
    "path", ["../escape.txt", "a/../../escape.txt", "/abs/escape.txt", "./x.txt", "a/./b.txt", ".git/config", "x/"]
)
def test_raw_commits_with_paths_the_client_never_sends_are_refused(hub_server, api, path):
    commits = len(api.list_repo_commits(REPO))
    resp = _commit(hub_server, _file(path))
    assert resp.status_code == 400, resp.text
    assert resp.headers["X-Error-Code"] == "InvalidPath"
    assert len(api.list_repo_commits(REPO)) == commits
    preupload = httpx.post(
        f"{hub_server}/api/models/{REPO}/preupload/main",
        json={"files": [{"path": path, "sample": "", "size": 1}]},
    )
    assert preupload.status_code == 400 and preupload.headers["X-Error-Code"] == "InvalidPath"


def test_one_bad_operation_refuses_the_whole_commit(hub_server, api):
    resp = _commit(hub_server, _file("fine.txt"), {"key": "deletedFile", "value": {"path": "../x"}})
    assert resp.status_code == 400
    assert "fine.txt" not in api.list_repo_files(REPO)


def test_lfs_object_ids_must_be_sha256(hub_server, api):
    bad = "../../../../../../etc/passwd"
    lfs = {"key": "lfsFile", "value": {"path": "passwd", "algo": "sha256", "oid": bad, "size": 10}}
    for resp in (
        _commit(hub_server, lfs),
        httpx.post(f"{hub_server}/_lfs/verify", json={"oid": bad, "size": 1}),
        httpx.post(f"{hub_server}/{REPO}.git/info/lfs/objects/batch", json={"objects": [{"oid": bad, "size": 1}]}),
        httpx.put(f"{hub_server}/_lfs/{'A' * 64}", content=b"x"),
    ):
        assert resp.status_code == 400, resp.text
        assert resp.headers["X-Error-Code"] == "InvalidOid"
    good = hashlib.sha256(b"x").hexdigest()
    assert httpx.put(f"{hub_server}/_lfs/{good}", content=b"x").status_code == 200


@pytest.mark.parametrize("name", ["bad--name", "bad..name", "-bad", "name.git", "x" * 97, "café", "a b", "sp/lit", ""])
def test_repo_ids_follow_the_hubs_rules(hub_server, name):
    resp = httpx.post(f"{hub_server}/api/repos/create", json={"name": name, "organization": "geo-org"})
    assert resp.status_code == 400, resp.text
    assert resp.headers["X-Error-Code"] == "InvalidRepoId"
    assert httpx.post(f"{hub_server}/api/repos/create", json={"organization": "geo-org"}).status_code == 400


def test_reads_refuse_bad_paths_and_ids_too(hub_server, api):
    for url in (
        f"/{REPO}/resolve/main/%2E%2E/%2E%2E/etc/passwd",
        f"/api/models/{REPO}/tree/main/a%2F%2E%2E%2F%2E%2E",
        "/api/models/geo-org/bad--name",
        "/api/models/geo-org/bad--name/tree/main",
    ):
        resp = httpx.get(hub_server + url)
        assert resp.status_code == 400, url
        assert resp.headers["X-Error-Code"] in ("InvalidPath", "InvalidRepoId")


def test_branch_names_follow_gits_rules(hub_server, api):
    for branch in ("a..b", "a b", "-x", "x.lock", "a~1", "a%5Eb"):
        resp = httpx.post(f"{hub_server}/api/models/{REPO}/branch/{branch}", json={})
        assert resp.status_code == 400, branch
        assert resp.headers["X-Error-Code"] == "InvalidBranch"
    api.create_branch(REPO, branch="release/v1.0")
    assert "release/v1.0" in {b.name for b in api.list_repo_refs(REPO).branches}


def test_malformed_commits_are_400_not_500(hub_server, api):
    url = f"{hub_server}/api/models/{REPO}/commit/main"
    for body in (b"not json", b'{"key": "file"}', b'{"key": "header", "value": {}}\n{"key": "file", "value": 3}'):
        resp = httpx.post(url, content=body)
        assert resp.status_code == 400, body
        assert resp.headers["X-Error-Code"] == "InvalidCommit"
