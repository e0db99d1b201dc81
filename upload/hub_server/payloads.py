"""The Hub's JSON shapes: errors, tree entries, repo info. Pure functions of the stored index."""

import hashlib
import re

import yaml
from fastapi import Request
from fastapi.responses import JSONResponse

from upload.hub_server.store import HubStore, lfs_pointer


CARD_FRONT_MATTER = re.compile(r"^---\s*\n(.*?)\n---\s*\n", re.S)


def hub_error(code: str, message: str, status: int = 404, detail: str | None = None) -> JSONResponse:
    """A Hub-shaped error: the status, ``X-Error-Code`` / ``X-Error-Message`` headers, ``{"error": detail}``."""
    # Header values are Latin-1 and one line: anything else (a hostile path's bytes) is escaped.
    headers = {"X-Error-Code": code, "X-Error-Message": message.encode("ascii", "backslashreplace").decode()}
    return JSONResponse({"error": detail or message}, status_code=status, headers=headers)


def bad_request(code: str, message: str) -> JSONResponse:
    """A 400 with the Hub's headers, for what the Hub refuses (an invalid repo id, path, branch or object id)."""
    return hub_error(code, message, 400)


class Refused(Exception):
    """A request the Hub refuses: raised where the refusal is found, answered with ``response`` by the app."""

    def __init__(self, response: JSONResponse):
        super().__init__(response.status_code)
        self.response = response


def base_url(request: Request) -> str:
    """The server's own URL, as the client reached it."""
    return str(request.base_url).rstrip("/")


def file_entry(path: str, f: dict) -> dict:
    """A file as ``tree`` and ``paths-info`` list it (``lfs`` for LFS files)."""
    entry = {"type": "file", "oid": f["git_oid"], "size": f["size"], "path": path}
    if f["lfs"]:
        entry["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": len(lfs_pointer(f["sha256"], f["size"]))}
    return entry


def folder_entry(path: str) -> dict:
    """A folder as ``tree`` and ``paths-info`` list it."""
    return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}


def tree_entries(files: dict, prefix: str, recursive: bool) -> list[dict]:
    """The entries under folder ``prefix`` (``""``: the root), folders before the files inside them."""
    prefix = prefix.strip("/")
    out, dirs = [], set()
    for path in sorted(files):
        if prefix and not path.startswith(prefix + "/"):
            continue
        rest = path[len(prefix) + 1 :] if prefix else path
        if "/" in rest:
            parts = rest.split("/")
            for i in range(1, len(parts) if recursive else 2):
                folder = "/".join(([prefix] if prefix else []) + parts[:i])
                if folder not in dirs:
                    dirs.add(folder)
                    out.append(folder_entry(folder))
            if not recursive:
                continue
        out.append(file_entry(path, files[path]))
    return out


def card_data(store: HubStore, files: dict) -> dict:
    """The YAML front matter of the repo's README.md, or ``{}``."""
    if "README.md" not in files:
        return {}
    match = CARD_FRONT_MATTER.match(store.read_text(files["README.md"]["sha256"]))
    if not match:
        return {}
    try:
        card = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return card if isinstance(card, dict) else {}


def repo_info_payload(store: HubStore, rtype: str, repo_id: str, repo: dict, oid: str) -> dict:
    """``model_info`` / ``dataset_info`` / ``space_info`` of a repo at commit ``oid``."""
    commit = repo["commits"][oid]
    files = store.files_at(repo, oid)
    card = card_data(store, files)
    info = {
        "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
        "id": repo_id,
        "author": repo_id.split("/")[0],
        "sha": oid,
        "lastModified": commit["date"],
        "createdAt": repo["created"],
        "private": repo["private"],
        "disabled": False,
        "gated": False,
        "downloads": 0,
        "likes": 0,
        "tags": card.get("tags", []) or [],
        "cardData": card,
        "siblings": [{"rfilename": p} for p in sorted(files)],
    }
    if rtype == "model":
        info.update(
            {"modelId": repo_id, "library_name": card.get("library_name"), "pipeline_tag": card.get("pipeline_tag")}
        )
    if rtype == "space":
        hardware = {"current": "cpu-basic", "requested": "cpu-basic"}
        info.update({"sdk": repo.get("sdk"), "runtime": {"stage": "RUNNING", "hardware": hardware}})
    return info
