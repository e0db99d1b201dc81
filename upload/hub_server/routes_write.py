"""Write routes: repos, branches, YAML validation, and uploads (preupload, LFS batch/PUT/verify, NDJSON commit)."""

import base64
import hashlib
import json
import re
from urllib.parse import unquote

import yaml
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from upload.hub_server.payloads import CARD_FRONT_MATTER, base_url, hub_error
from upload.hub_server.routes_read import find_repo, hub
from upload.hub_server.state import PREFIX, TYPES
from upload.hub_server.store import HubStore, lfs_entry, regular_entry


router = APIRouter()

#: Files the Hub stores in LFS whatever their size (binary samples and files over 10 MB are LFS too).
LFS_EXT = re.compile(
    r"\.(safetensors|bin|pt|pth|ckpt|parquet|arrow|png|jpg|jpeg|webp|tif|tiff|mp4|gif|zip|gz|tar|npy|npz|onnx|h5"
    r"|msgpack|model)$",
    re.I,
)


def _repo_id(body: dict) -> str:
    return f"{body['organization']}/{body['name']}" if body.get("organization") else f"tester/{body['name']}"


@router.post("/api/repos/create")
async def create_repo(request: Request):
    """Create a model, dataset or Space repo; 409 when it exists (``exist_ok`` clients accept that)."""
    body = await request.json()
    rtype, repo_id = body.get("type") or "model", _repo_id(body)
    url = f"{base_url(request)}/{PREFIX[rtype]}{repo_id}"
    private = body.get("visibility") == "private" or bool(body.get("private"))
    if not hub(request).store.create_repo(rtype, repo_id, private=private, sdk=body.get("sdk")):
        return JSONResponse({"error": "You already created this repo", "url": url}, status_code=409)
    return {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]}


@router.delete("/api/repos/delete")
async def delete_repo(request: Request):
    """Delete a repo."""
    body = await request.json()
    if not hub(request).store.delete_repo(body.get("type") or "model", _repo_id(body)):
        return hub_error("RepoNotFound", "Repository not found")
    return {}


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request):
    """Check that a README's front matter parses (400 with the parser's message otherwise)."""
    body = await request.json()
    match = CARD_FRONT_MATTER.match(body.get("content", ""))
    try:
        if match:
            yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        return JSONResponse({"errors": [{"message": str(err)}]}, status_code=400)
    return {"errors": [], "warnings": []}


@router.post("/api/{rtypes}/{org}/{name}/branch/{branch:path}")
async def create_branch(rtypes: str, org: str, name: str, branch: str, request: Request):
    """Create a branch from ``startingPoint`` (default: main); 409 when it exists."""
    repo, error = find_repo(request, TYPES.get(rtypes), f"{org}/{name}")
    if error:
        return error
    store = hub(request).store
    if branch in store.branches(repo):
        return JSONResponse({"error": f"Reference already exists: refs/heads/{branch}"}, status_code=409)
    body = await request.json() if (await request.body()) else {}
    start = store.resolve_rev(repo, body.get("startingPoint") or "main")
    if not start:
        return hub_error("RevisionNotFound", f"Invalid rev id: {body.get('startingPoint')}")
    store.create_branch(repo, branch, start)
    return {}


@router.post("/api/{rtypes}/{org}/{name}/preupload/{rev:path}")
async def preupload(rtypes: str, org: str, name: str, rev: str, request: Request):
    """Tell the client, per file, whether it goes through LFS, and the id of the file already there (if any)."""
    repo, error = find_repo(request, TYPES.get(rtypes), f"{org}/{name}")
    if error:
        return error
    store = hub(request).store
    head = store.resolve_rev(repo, rev) or repo["main"]
    files = store.files_at(repo, head)
    out = []
    for f in (await request.json())["files"]:
        sample = base64.b64decode(f["sample"])
        lfs = bool(LFS_EXT.search(f["path"])) or f["size"] > 10 * 1024 * 1024 or b"\0" in sample
        cur = files.get(f["path"])
        # The id the client compares with its own to drop unchanged files: sha256 for LFS files, as on the Hub.
        oid = cur and (cur["sha256"] if cur["lfs"] else cur["git_oid"])
        out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
    return {"files": out, "commitOid": head}


@router.post("/{p1}/{p2}.git/info/lfs/objects/batch")
@router.post("/{p0}/{p1}/{p2}.git/info/lfs/objects/batch")
async def lfs_batch(request: Request, p1: str, p2: str, p0: str = ""):
    """Git LFS batch API: an upload and a verify action for each object the repo does not own yet."""
    rtype = TYPES.get(p0, "model") if p0 else "model"
    repo, error = find_repo(request, rtype, f"{p1}/{p2}")
    if error:
        return error
    store, base = hub(request).store, base_url(request)
    objects = []
    for o in (await request.json()).get("objects", []):
        if store.owns_lfs_object(repo, o["oid"]):
            objects.append({"oid": o["oid"], "size": o["size"]})  # no actions: nothing to send
            continue
        actions = {
            "upload": {"href": f"{base}/_lfs/{o['oid']}?repo={PREFIX[rtype]}{p1}/{p2}", "header": {}},
            "verify": {"href": f"{base}/_lfs/verify", "header": {}},
        }
        objects.append({"oid": o["oid"], "size": o["size"], "authenticated": True, "actions": actions})
    return JSONResponse(
        {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, media_type="application/vnd.git-lfs+json"
    )


@router.put("/_lfs/{oid}")
async def lfs_put(oid: str, request: Request):
    """Receive one LFS object (the ``upload`` action's href); it then belongs to the repo named in the href."""
    state = hub(request)
    data = await request.body()
    if state.take_fault("fail_lfs_put_after"):
        return JSONResponse({"error": "injected fault: storage full"}, status_code=507)
    sha = hashlib.sha256(data).hexdigest()
    if sha != oid:
        return JSONResponse({"error": f"sha256 mismatch {sha} != {oid}"}, status_code=400)
    state.store.put_blob(data)
    repo_path = request.query_params.get("repo", "")
    rtype = next((t for t, prefix in PREFIX.items() if prefix and repo_path.startswith(prefix)), "model")
    repo_id = repo_path.removeprefix(PREFIX[rtype])
    if state.store.get_repo(rtype, repo_id) is not None:
        state.store.add_lfs_object(rtype, repo_id, oid)
    return Response(status_code=200)


@router.post("/_lfs/verify")
async def lfs_verify(request: Request):
    """Git LFS verify: the object is stored with the announced size."""
    body = await request.json()
    path = hub(request).store.blob_path(body["oid"])
    if not path.exists() or path.stat().st_size != body["size"]:
        return JSONResponse({"error": "object missing"}, status_code=404)
    return {}


def commit_changes(store: HubStore, files: dict, operations: list[dict]) -> tuple[dict, JSONResponse | None]:
    """The changes (``{path: entry, or None if deleted}``) a commit's operations make to ``files``.

    Returns:
        ``(changes, None)``, or ``({}, error)`` with the error that refuses the whole commit.
    """
    changes: dict[str, dict | None] = {}
    for item in operations:
        key, value = item["key"], item["value"]
        if key == "file":
            encoded = value.get("encoding") == "base64"
            data = base64.b64decode(value["content"]) if encoded else value["content"].encode()
            changes[value["path"]] = regular_entry(data, store.put_blob(data))
        elif key == "lfsFile":
            if not store.has_blob(value["oid"]):
                return {}, JSONResponse({"error": f"LFS object {value['oid']} not uploaded"}, status_code=400)
            size = value.get("size") or store.blob_path(value["oid"]).stat().st_size
            changes[value["path"]] = lfs_entry(value["oid"], size)
        elif key == "deletedFile":
            path = value["path"]
            exists = changes[path] is not None if path in changes else path in files
            if not exists:
                return {}, hub_error("EntryNotFound", f"{path} not found")
            changes[path] = None
        elif key == "deletedFolder":
            folder = value["path"].rstrip("/") + "/"
            changes.update({p: None for p in [*files, *changes] if p.startswith(folder)})
        else:
            return {}, JSONResponse({"error": f"unsupported commit op {key}"}, status_code=400)
    return changes, None


@router.post("/api/{rtypes}/{org}/{name}/commit/{rev:path}")
async def commit(rtypes: str, org: str, name: str, rev: str, request: Request):
    """An NDJSON commit (a header line, then one line per operation) on top of a branch."""
    rtype = TYPES.get(rtypes)
    repo, error = find_repo(request, rtype, f"{org}/{name}")
    if error:
        return error
    state = hub(request)
    store = state.store
    branch = unquote(rev).removeprefix("refs/heads/")
    head = store.branches(repo).get(branch)
    if head is None:
        return hub_error("RevisionNotFound", f"Invalid rev id: {rev} (commits go to a branch; create it first)")
    lines = [json.loads(line) for line in (await request.body()).decode().splitlines() if line.strip()]
    header = lines[0]["value"]
    if header.get("parentCommit") and header["parentCommit"] != head:
        return JSONResponse({"error": "parent commit is not the head of the branch"}, status_code=412)
    changes, error = commit_changes(store, store.files_at(repo, head), lines[1:])
    if error:
        return error
    if state.take_fault("fail_commit_after"):
        return JSONResponse({"error": "injected fault: commit refused"}, status_code=507)
    oid = store.new_commit(repo, changes, header.get("summary", ""), branch)
    return {
        "commitUrl": f"{base_url(request)}/{PREFIX[rtype]}{org}/{name}/commit/{oid}",
        "commitOid": oid,
        "pullRequestUrl": None,
        "success": True,
    }
