"""A geollava-hub started with a token refuses every request without it; bound beyond loopback it needs one."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from upload.loopback import free_port, serve_hub


ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hub-secret-0123456789abcdef"
PAYLOAD = bytes(range(256)) * 16  # binary: an LFS upload, through the signed URL


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    storage = tmp_path_factory.mktemp("guarded") / "storage"
    with serve_hub(storage, token=TOKEN) as url:
        yield url, storage.with_name(storage.name + ".log")


def test_the_right_token_works_end_to_end(guarded, tmp_path):
    url, _ = guarded
    api = HfApi(endpoint=url, token=TOKEN)
    api.create_repo("geo-org/guarded", exist_ok=True)
    api.upload_file(path_or_fileobj=PAYLOAD, path_in_repo="w.bin", repo_id="geo-org/guarded")
    assert api.get_paths_info("geo-org/guarded", ["w.bin"])[0].lfs.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    path = hf_hub_download("geo-org/guarded", "w.bin", endpoint=url, token=TOKEN, cache_dir=tmp_path)
    assert Path(path).read_bytes() == PAYLOAD


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_every_request_without_the_token_is_401(guarded, tmp_path, token):
    url, _ = guarded
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for method, path in (
        ("GET", "/api/whoami-v2"),
        ("GET", "/api/models/geo-org/guarded"),
        ("GET", "/api/models/geo-org/guarded/tree/main"),
        ("GET", "/geo-org/guarded/resolve/main/w.bin"),
        ("POST", "/api/repos/create"),
        ("GET", "/_log"),
        ("POST", "/_faults"),
        ("PUT", f"/_lfs/{hashlib.sha256(b'x').hexdigest()}?repo=geo-org/guarded"),
        ("GET", "/no/such/route"),
    ):
        resp = httpx.request(method, url + path, headers=headers, json={})
        assert resp.status_code == 401, (method, path)
        assert resp.headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    # Through the client: an authentication error, not "repository not found".
    with pytest.raises(HfHubHTTPError, match="Invalid credentials") as err:
        HfApi(endpoint=url, token=token or False).model_info("geo-org/guarded")
    assert err.value.response.status_code == 401


def test_the_token_is_never_logged(guarded):
    url, log = guarded
    httpx.get(f"{url}/api/whoami-v2", headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
    assert TOKEN not in log.read_text()


def test_beyond_loopback_it_refuses_to_start_without_a_token(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "upload.hub_server", "--host", "0.0.0.0", "--storage", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "GEOLLAVA_HUB_TOKEN"},
    )
    assert proc.returncode == 2
    assert "not a loopback address" in proc.stderr and "GEOLLAVA_HUB_TOKEN" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_beyond_loopback_with_a_token_it_serves_only_with_it(tmp_path):
    port = free_port("0.0.0.0")
    with serve_hub(tmp_path / "s", host="0.0.0.0", port=port, token=TOKEN) as url:
        assert httpx.get(f"{url}/api/whoami-v2").status_code == 401
        assert httpx.get(f"{url}/api/whoami-v2", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
