"""Write routes: repos, branches, YAML validation, and uploads (preupload, LFS batch/PUT/verify, NDJSON commit)."""

import base64
import hashlib
import json
import re
from urllib.parse import unquote

import yaml
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from upload.hub_server.payloads import CARD_FRONT_MATTER, Refused, bad_request, base_url, hub_error
from upload.hub_server.routes_read import find_repo, hub
from upload.hub_server.state import PREFIX, TYPES
from upload.hub_server.store import HubStore, lfs_entry, regular_entry
from upload.hub_server.validation import (
    branch_problem,
    oid_problem,
    path_problem,
    repo_id_problem,
    upload_signature,
)


router = APIRouter()

#: Files the Hub stores in LFS whatever their size (binary samples and files over 10 MB are LFS too).
LFS_EXT = re.compile(
    r"\.(safetensors|bin|pt|pth|ckpt|parquet|arrow|png|jpg|jpeg|webp|tif|tiff|mp4|gif|zip|gz|tar|npy|npz|onnx|h5"
    r"|msgpack|model)$",
    re.I,
)


def repo_from_body(body) -> tuple[str, str]:
    """``(type, repo id)`` of a create/delete request, or :class:`Refused` when it names no valid repo."""
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise Refused(bad_request("InvalidRepoId", "Invalid request: expected a JSON object with a 'name'"))
    rtype, org = body.get("type") or "model", body.get("organization") or "tester"
    repo_id = f"{org}/{body['name']}" if isinstance(org, str) else str(org)
    problem = repo_id_problem(repo_id) or (None if rtype in PREFIX else f"Invalid repo type {ascii(rtype)}")
    if problem:
        raise Refused(bad_request("InvalidRepoId", problem))
    return rtype, repo_id


@router.post("/api/repos/create")
async def create_repo(request: Request):
    """Create a model, dataset or Space repo; 409 when it exists (``exist_ok`` clients accept that)."""
    body = await request.json()
    rtype, repo_id = repo_from_body(body)
    url = f"{base_url(request)}/{PREFIX[rtype]}{repo_id}"
    private = body.get("visibility") == "private" or bool(body.get("private"))
    if not hub(request).store.create_repo(rtype, repo_id, private=private, sdk=body.get("sdk")):
        return JSONResponse({"error": "You already created this repo", "url": url}, status_code=409)
    return {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]}


@router.delete("/api/repos/delete")
async def delete_repo(request: Request):
    """Delete a repo."""
    rtype, repo_id = repo_from_body(await request.json())
    if not hub(request).store.delete_repo(rtype, repo_id):
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
    repo = find_repo(request, TYPES.get(rtypes), f"{org}/{name}")
    problem = branch_problem(branch)
    if problem:
        return bad_request("InvalidBranch", problem)
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
    repo = find_repo(request, TYPES.get(rtypes), f"{org}/{name}")
    store = hub(request).store
    head = store.resolve_rev(repo, rev) or repo["main"]
    files = store.files_at(repo, head)
    wanted = (await request.json())["files"]
    problem = next(filter(None, (path_problem(f["path"]) for f in wanted)), None)
    if problem:
        return bad_request("InvalidPath", problem)
    out = []
    for f in wanted:
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
    repo = find_repo(request, rtype, f"{p1}/{p2}")
    state, base = hub(request), base_url(request)
    wanted = (await request.json()).get("objects", [])
    problem = next(filter(None, (oid_problem(o.get("oid")) for o in wanted)), None)
    if problem:
        return bad_request("InvalidOid", problem)
    objects = []
    for o in wanted:
        if state.store.owns_lfs_object(repo, o["oid"]):
            objects.append({"oid": o["oid"], "size": o["size"]})  # no actions: nothing to send
            continue
        repo_path = f"{PREFIX[rtype]}{p1}/{p2}"
        href = f"{base}/_lfs/{o['oid']}?repo={repo_path}"
        if state.token:
            href += f"&sig={upload_signature(state.token, repo_path, o['oid'])}"
        actions = {
            "upload": {"href": href, "header": {}},
            "verify": {"href": f"{base}/_lfs/verify", "header": {}},
        }
        objects.append({"oid": o["oid"], "size": o["size"], "authenticated": True, "actions": actions})
    return JSONResponse(
        {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, media_type="application/vnd.git-lfs+json"
    )


@router.put("/_lfs/{oid}")
async def lfs_put(oid: str, request: Request):
    """Receive one LFS object (the ``upload`` action's href); it then belongs to the repo named in the href."""
    if oid_problem(oid):
        return bad_request("InvalidOid", oid_problem(oid))
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
    if oid_problem(body.get("oid")):
        return bad_request("InvalidOid", oid_problem(body.get("oid")))
    path = hub(request).store.blob_path(body["oid"])
    if not path.exists() or path.stat().st_size != body["size"]:
        return JSONResponse({"error": "object missing"}, status_code=404)
    return {}


def operation_problem(item) -> JSONResponse | None:
    """The 400 for a commit operation the Hub refuses (malformed, a bad path or object id), or ``None``."""
    value = item.get("value") if isinstance(item, dict) else None
    if not isinstance(value, dict) or not isinstance(value.get("path"), str):
        shown = ascii(item)[:200]
        return bad_request("InvalidCommit", f"Invalid commit operation {shown}: expected a key and a value.path")
    path = value["path"].rstrip("/") if item.get("key") == "deletedFolder" else value["path"]
    if path_problem(path):
        return bad_request("InvalidPath", path_problem(path))
    if item.get("key") == "lfsFile" and oid_problem(value.get("oid")):
        return bad_request("InvalidOid", oid_problem(value.get("oid")))
    return None


def parse_commit(raw: bytes) -> tuple[dict, list[dict]]:
    """The header and operations of an NDJSON commit, or :class:`Refused` with the 400 that refuses it."""
    try:
        lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise Refused(bad_request("InvalidCommit", f"Invalid commit payload: not NDJSON ({err})")) from err
    header = lines[0].get("value") if lines and isinstance(lines[0], dict) else None
    if not isinstance(header, dict) or lines[0].get("key") != "header":
        raise Refused(bad_request("InvalidCommit", "Invalid commit payload: the first line must be the header"))
    refused = next(filter(None, (operation_problem(item) for item in lines[1:])), None)
    if refused:
        raise Refused(refused)
    return header, lines[1:]


def commit_changes(store: HubStore, files: dict, operations: list[dict]) -> dict:
    """The changes (``{path: entry, or None if deleted}``) a commit's operations make to ``files``.

    Raises:
        Refused: With the answer that refuses the whole commit.
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
                raise Refused(JSONResponse({"error": f"LFS object {value['oid']} not uploaded"}, status_code=400))
            size = value.get("size") or store.blob_path(value["oid"]).stat().st_size
            changes[value["path"]] = lfs_entry(value["oid"], size)
        elif key == "deletedFile":
            path = value["path"]
            exists = changes[path] is not None if path in changes else path in files
            if not exists:
                raise Refused(hub_error("EntryNotFound", f"{path} not found"))
            changes[path] = None
        elif key == "deletedFolder":
            folder = value["path"].rstrip("/") + "/"
            changes.update({p: None for p in [*files, *changes] if p.startswith(folder)})
        else:
            raise Refused(JSONResponse({"error": f"unsupported commit op {key}"}, status_code=400))
    return changes


@router.post("/api/{rtypes}/{org}/{name}/commit/{rev:path}")
async def commit(rtypes: str, org: str, name: str, rev: str, request: Request):
    """An NDJSON commit (a header line, then one line per operation) on top of a branch."""
    rtype = TYPES.get(rtypes)
    repo = find_repo(request, rtype, f"{org}/{name}")
    state = hub(request)
    store = state.store
    branch = unquote(rev).removeprefix("refs/heads/")
    head = store.branches(repo).get(branch)
    if head is None:
        return hub_error("RevisionNotFound", f"Invalid rev id: {rev} (commits go to a branch; create it first)")
    header, operations = parse_commit(await request.body())
    if header.get("parentCommit") and header["parentCommit"] != head:
        return JSONResponse({"error": "parent commit is not the head of the branch"}, status_code=412)
    changes = commit_changes(store, store.files_at(repo, head), operations)
    if state.take_fault("fail_commit_after"):
        return JSONResponse({"error": "injected fault: commit refused"}, status_code=507)
    oid = store.new_commit(repo, changes, header.get("summary", ""), branch)
    return {
        "commitUrl": f"{base_url(request)}/{PREFIX[rtype]}{org}/{name}/commit/{oid}",
        "commitOid": oid,
        "pullRequestUrl": None,
        "success": True,
    }
