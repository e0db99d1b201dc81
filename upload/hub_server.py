"""A small Hugging Face Hub-compatible server on loopback: a stand-in for tests and offline staging, not a Hub.

    geollava-hub --host 127.0.0.1 --port 18900 --storage outputs/hub

Enough of the Hub API for the real ``huggingface_hub``, ``datasets`` and ``peft`` clients to create model, dataset
and Space repos, upload (regular and LFS), list, download and resolve by revision (branches included), with the Hub's
error shapes (404 + ``X-Error-Code``); blobs and the repo index persist on disk. Single user, no auth, no Xet: clients
need ``HF_ENDPOINT=http://127.0.0.1:PORT`` (set before importing them) and ``HF_HUB_DISABLE_XET=1``. Started from the
prototype verified in the project's reference notes (data-hub-stack.md, Appendix A).
"""

# ruff: noqa: D103
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import unquote

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse


app = FastAPI()
ROOT = os.environ.get("GEOLLAVA_HUB_STORAGE", "hub-storage")  # set by main() from --storage
LOCK = threading.Lock()
REPOS: dict[tuple[str, str], dict] = {}  # (type, repo_id) -> {"commits": {oid: commit}, "main": oid, ...}
LOG: list[str] = []
#: Faults armed by tests through ``POST /_faults``: {"fail_lfs_put_after": N} lets N more LFS uploads through, then
#: answers the next one with 507 (not retried by clients), as a server failing midway through a push would.
FAULTS: dict[str, int] = {}
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_EXT = re.compile(
    r"\.(safetensors|bin|pt|pth|ckpt|parquet|arrow|png|jpg|jpeg|webp|tif|tiff|mp4|gif|zip|gz|tar|npy|npz|onnx|h5|msgpack|model)$",
    re.I,
)


def ERR(code: str, msg: str, status: int = 404) -> JSONResponse:  # noqa: N802 - reads like the Hub's error shape
    """A Hub-shaped error: status + ``X-Error-Code`` / ``X-Error-Message`` headers."""
    return JSONResponse({"error": msg}, status_code=status, headers={"X-Error-Code": code, "X-Error-Message": msg})


def base_url(req: Request) -> str:
    return str(req.base_url).rstrip("/")


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def blob_path(sha: str) -> str:
    return os.path.join(ROOT, "blobs", sha)


def put_blob(data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    p = blob_path(sha)
    if not os.path.exists(p):
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p + ".tmp", "wb") as f:
            f.write(data)
        os.replace(p + ".tmp", p)
    return sha


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()


@app.middleware("http")
async def log_requests(request: Request, call_next):
    resp = await call_next(request)
    query = f"?{request.url.query}" if request.url.query else ""
    line = f"{request.method} {request.url.path}{query} -> {resp.status_code}"
    LOG.append(line)
    print(line, file=sys.stderr, flush=True)
    return resp


def get_repo(rtype: str, repo_id: str):
    return REPOS.get((rtype, repo_id))


def save_index() -> None:
    """Persist the repo index next to the blobs, atomically, so repos survive a restart."""
    data = [{"type": t, "id": i, **repo} for (t, i), repo in REPOS.items()]
    tmp = os.path.join(ROOT, "index.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, os.path.join(ROOT, "index.json"))


def load_index() -> None:
    """Load the repo index written by :func:`save_index`, if any."""
    path = os.path.join(ROOT, "index.json")
    if os.path.exists(path):
        with open(path) as fh:
            for entry in json.load(fh):
                rtype, repo_id = entry.pop("type"), entry.pop("id")
                REPOS[(rtype, repo_id)] = entry


def resolve_rev(repo: dict, rev: str):
    rev = unquote(rev).removeprefix("refs/heads/")
    if rev in repo.setdefault("branches", {"main": repo["main"]}):
        return repo["branches"][rev]
    if rev in repo["commits"]:
        return rev
    for oid in repo["commits"]:  # short sha
        if len(rev) >= 7 and oid.startswith(rev):
            return oid
    return None


def repo_at(rtype: str | None, repo_id: str, rev: str) -> tuple[dict | None, str | None, JSONResponse | None]:
    """``(repo, commit oid, None)``, or ``(None, None, error)`` with the Hub's RepoNotFound / RevisionNotFound."""
    repo = rtype and get_repo(rtype, repo_id)
    if not repo:
        return None, None, ERR("RepoNotFound", "Repository not found")
    oid = resolve_rev(repo, rev)
    if not oid:
        return None, None, ERR("RevisionNotFound", f"Invalid rev id: {rev}")
    return repo, oid, None


def new_commit(repo: dict, files: dict, message: str, branch: str = "main") -> str:
    parent = repo.setdefault("branches", {}).get(branch, repo.get("main"))
    oid = hashlib.sha1(
        json.dumps([parent, message, sorted((k, v["sha256"]) for k, v in files.items()), time.time()]).encode()
    ).hexdigest()
    repo["commits"][oid] = {"oid": oid, "parent": parent, "message": message, "files": files, "date": now()}
    repo["branches"][branch] = oid
    if branch == "main":
        repo["main"] = oid
    save_index()
    return oid


def file_entry(path: str, f: dict, expand: bool = False) -> dict:
    e = {"type": "file", "oid": f["git_oid"], "size": f["size"], "path": path}
    if f["lfs"]:
        e["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": len(lfs_pointer(f["sha256"], f["size"]))}
    return e


def tree_entries(files: dict, prefix: str, recursive: bool) -> list:
    prefix = prefix.strip("/")
    out, dirs = [], set()
    for path in sorted(files):
        if prefix and not path.startswith(prefix + "/"):
            continue
        rest = path[len(prefix) + 1 :] if prefix else path
        if "/" in rest:
            parts = rest.split("/")
            for i in range(1, len(parts) if recursive else 2):
                d = "/".join(([prefix] if prefix else []) + parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    out.append(
                        {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                    )
            if not recursive:
                continue
        out.append(file_entry(path, files[path]))
    return out


def repo_info_payload(rtype: str, repo_id: str, repo: dict, oid: str) -> dict:
    c = repo["commits"][oid]
    files = c["files"]
    card = {}
    if "README.md" in files:
        with open(blob_path(files["README.md"]["sha256"]), encoding="utf-8", errors="replace") as fh:
            txt = fh.read()
        m = re.match(r"^---\s*\n(.*?)\n---\s*\n", txt, re.S)
        if m:
            import yaml

            card = yaml.safe_load(m.group(1)) or {}
    d = {
        "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
        "id": repo_id,
        "author": repo_id.split("/")[0],
        "sha": oid,
        "lastModified": c["date"],
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
        d.update(
            {"modelId": repo_id, "library_name": card.get("library_name"), "pipeline_tag": card.get("pipeline_tag")}
        )
    if rtype == "space":
        d.update(
            {
                "sdk": repo.get("sdk"),
                "runtime": {"stage": "RUNNING", "hardware": {"current": "cpu-basic", "requested": "cpu-basic"}},
            }
        )
    return d


# ---------------------------------------------------------------- account / repo management
@app.get("/api/whoami-v2")
async def whoami():
    return {
        "type": "user",
        "name": "tester",
        "fullname": "Test User",
        "orgs": [{"name": "geo-org", "type": "org"}],
        "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
    }


@app.post("/api/repos/create")
async def create_repo(req: Request):
    body = await req.json()
    rtype = body.get("type") or "model"
    repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else f"tester/{body['name']}"
    with LOCK:
        if (rtype, repo_id) in REPOS:
            return JSONResponse(
                {"error": "You already created this repo", "url": f"{base_url(req)}/{PREFIX[rtype]}{repo_id}"},
                status_code=409,
            )
        repo = {
            "commits": {},
            "main": None,
            "private": body.get("visibility") == "private" or bool(body.get("private")),
            "created": now(),
            "sdk": body.get("sdk"),
        }
        ga = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"
        sha = put_blob(ga)
        new_commit(
            repo,
            {".gitattributes": {"sha256": sha, "size": len(ga), "lfs": False, "git_oid": git_oid(ga)}},
            "initial commit",
        )
        REPOS[(rtype, repo_id)] = repo
    return {
        "url": f"{base_url(req)}/{PREFIX[rtype]}{repo_id}",
        "name": repo_id,
        "id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
    }


@app.delete("/api/repos/delete")
async def delete_repo(req: Request):
    body = await req.json()
    rtype = body.get("type") or "model"
    repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else f"tester/{body['name']}"
    if REPOS.pop((rtype, repo_id), None) is None:
        return ERR("RepoNotFound", "Repository not found")
    save_index()
    return {}


@app.post("/api/validate-yaml")
async def validate_yaml(request: Request):
    body = await request.json()  # {"content": README text, "repoType": ...}
    import yaml

    m = re.match(r"^---\s*\n(.*?)\n---\s*\n", body.get("content", ""), re.S)
    try:
        if m:
            yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        return JSONResponse({"errors": [{"message": str(e)}]}, status_code=400)
    return {"errors": [], "warnings": []}


# ---------------------------------------------------------------- repo info / refs / tree / paths-info
@app.get("/api/{rtypes}/{org}/{name}")
@app.get("/api/{rtypes}/{org}/{name}/revision/{rev:path}")
async def repo_info(rtypes: str, org: str, name: str, rev: str = "main"):
    rtype = TYPES.get(rtypes)
    repo, oid, error = repo_at(rtype, f"{org}/{name}", rev)
    if error:
        return error
    return repo_info_payload(rtype, f"{org}/{name}", repo, oid)


@app.get("/api/{rtypes}/{org}/{name}/refs")
async def refs(rtypes: str, org: str, name: str):
    repo = get_repo(TYPES.get(rtypes, ""), f"{org}/{name}")
    if not repo:
        return ERR("RepoNotFound", "Repository not found")
    branches = repo.setdefault("branches", {"main": repo["main"]})
    return {
        "branches": [
            {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in sorted(branches.items())
        ],
        "tags": [],
        "converts": [],
    }


@app.post("/api/{rtypes}/{org}/{name}/branch/{branch:path}")
async def create_branch(rtypes: str, org: str, name: str, branch: str, request: Request):
    repo = get_repo(TYPES.get(rtypes, ""), f"{org}/{name}")
    if not repo:
        return ERR("RepoNotFound", "Repository not found")
    branches = repo.setdefault("branches", {"main": repo["main"]})
    if branch in branches:
        return JSONResponse({"error": f"Reference already exists: refs/heads/{branch}"}, status_code=409)
    body = await request.json() if (await request.body()) else {}
    start = resolve_rev(repo, body.get("startingPoint") or "main")
    if not start:
        return ERR("RevisionNotFound", f"Invalid rev id: {body.get('startingPoint')}")
    with LOCK:
        branches[branch] = start
        save_index()
    return {}


@app.get("/api/{rtypes}/{org}/{name}/commits/{rev:path}")
async def commits(rtypes: str, org: str, name: str, rev: str):
    repo = get_repo(TYPES.get(rtypes, ""), f"{org}/{name}")
    if not repo:
        return ERR("RepoNotFound", "Repository not found")
    out, oid = [], resolve_rev(repo, rev)
    while oid:
        c = repo["commits"][oid]
        out.append(
            {"id": oid, "title": c["message"], "message": "", "date": c["date"], "authors": [{"user": "tester"}]}
        )
        oid = c["parent"]
    return out


@app.get("/api/{rtypes}/{org}/{name}/tree/{rev}")
@app.get("/api/{rtypes}/{org}/{name}/tree/{rev}/{path:path}")
async def tree(rtypes: str, org: str, name: str, rev: str, request: Request, path: str = ""):
    repo, oid, error = repo_at(TYPES.get(rtypes), f"{org}/{name}", rev)
    if error:
        return error
    files = repo["commits"][oid]["files"]
    path = unquote(path).strip("/")
    if path and path in files:
        return ERR("EntryNotFound", f"{path} is a file, not a folder")
    if path and not any(p.startswith(path + "/") for p in files):
        return ERR("EntryNotFound", f"{path} does not exist on main")
    recursive = request.query_params.get("recursive", "false").lower() in ("1", "true")
    return tree_entries(files, path, recursive)


@app.post("/api/{rtypes}/{org}/{name}/paths-info/{rev:path}")
async def paths_info(rtypes: str, org: str, name: str, rev: str, request: Request):
    repo, oid, error = repo_at(TYPES.get(rtypes), f"{org}/{name}", rev)
    if error:
        return error
    ctype = request.headers.get("content-type", "")
    if "json" in ctype:
        paths = (await request.json()).get("paths", [])
    else:  # application/x-www-form-urlencoded: paths=a&paths=b&expand=...
        from urllib.parse import parse_qs

        paths = parse_qs((await request.body()).decode()).get("paths", [])
    files = repo["commits"][oid]["files"]
    out = []
    for p in paths:
        p = p.strip("/")
        if p in files:
            out.append(file_entry(p, files[p]))
        elif any(f.startswith(p + "/") for f in files) or p == "":
            out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
    return out


# ---------------------------------------------------------------- upload: preupload, LFS batch, PUT, verify, commit
@app.post("/api/{rtypes}/{org}/{name}/preupload/{rev:path}")
async def preupload(rtypes: str, org: str, name: str, rev: str, request: Request):
    repo = get_repo(TYPES.get(rtypes, ""), f"{org}/{name}")
    if not repo:
        return ERR("RepoNotFound", "Repository not found")
    body = await request.json()
    head = resolve_rev(repo, rev) or repo["main"]
    files = repo["commits"][head]["files"]
    out = []
    for f in body["files"]:
        sample = base64.b64decode(f["sample"])
        lfs = bool(LFS_EXT.search(f["path"])) or f["size"] > 10 * 1024 * 1024 or b"\0" in sample
        cur = files.get(f["path"])
        out.append(
            {
                "path": f["path"],
                "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": False,
                "oid": cur["git_oid"] if cur else None,
            }
        )
    return {"files": out, "commitOid": head}


@app.post("/{p1}/{p2}.git/info/lfs/objects/batch")
@app.post("/{p0}/{p1}/{p2}.git/info/lfs/objects/batch")
async def lfs_batch(request: Request, p1: str, p2: str, p0: str = ""):
    rtype = TYPES.get(p0, "model") if p0 else "model"
    repo = get_repo(rtype, f"{p1}/{p2}")
    if not repo:
        return ERR("RepoNotFound", "Repository not found")
    body = await request.json()
    base = base_url(request)
    # Like the Hub, LFS objects belong to a repo: uploaded ones stay (even without a commit), others must be sent.
    have = set(repo.get("lfs_objects", []))
    objs = []
    for o in body.get("objects", []):
        if o["oid"] in have and os.path.exists(blob_path(o["oid"])):
            objs.append({"oid": o["oid"], "size": o["size"]})  # already present -> no actions
        else:
            objs.append(
                {
                    "oid": o["oid"],
                    "size": o["size"],
                    "authenticated": True,
                    "actions": {
                        "upload": {"href": f"{base}/_lfs/{o['oid']}?repo={PREFIX[rtype]}{p1}/{p2}", "header": {}},
                        "verify": {"href": f"{base}/_lfs/verify", "header": {}},
                    },
                }
            )
    return JSONResponse(
        {"transfer": "basic", "objects": objs, "hash_algo": "sha256"}, media_type="application/vnd.git-lfs+json"
    )


@app.put("/_lfs/{oid}")
async def lfs_put(oid: str, request: Request):
    data = await request.body()
    with LOCK:
        left = FAULTS.get("fail_lfs_put_after")
        if left is not None:
            if left <= 0:
                FAULTS.pop("fail_lfs_put_after")
                return JSONResponse({"error": "injected fault: storage full"}, status_code=507)
            FAULTS["fail_lfs_put_after"] = left - 1
    sha = hashlib.sha256(data).hexdigest()
    if sha != oid:
        return JSONResponse({"error": f"sha256 mismatch {sha} != {oid}"}, status_code=400)
    put_blob(data)
    repo_path = request.query_params.get("repo", "")
    rtype = next((t for t, pfx in PREFIX.items() if pfx and repo_path.startswith(pfx)), "model")
    repo = get_repo(rtype, repo_path.removeprefix(PREFIX[rtype]))
    if repo is not None:
        with LOCK:
            repo.setdefault("lfs_objects", [])
            if oid not in repo["lfs_objects"]:
                repo["lfs_objects"].append(oid)
                save_index()
    return Response(status_code=200)


@app.post("/_lfs/verify")
async def lfs_verify(request: Request):
    body = await request.json()
    p = blob_path(body["oid"])
    if not os.path.exists(p) or os.path.getsize(p) != body["size"]:
        return JSONResponse({"error": "object missing"}, status_code=404)
    return {}


@app.post("/api/{rtypes}/{org}/{name}/commit/{rev:path}")
async def commit(rtypes: str, org: str, name: str, rev: str, request: Request):
    rtype = TYPES.get(rtypes)
    repo = rtype and get_repo(rtype, f"{org}/{name}")
    if not repo:
        return ERR("RepoNotFound", "Repository not found")
    branch = unquote(rev).removeprefix("refs/heads/")
    head = repo.setdefault("branches", {"main": repo["main"]}).get(branch)
    if head is None:
        return ERR("RevisionNotFound", f"Invalid rev id: {rev} (commits go to a branch; create it first)")
    raw = (await request.body()).decode()
    lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
    header = lines[0]["value"]
    if header.get("parentCommit") and header["parentCommit"] != head:
        return JSONResponse({"error": "parent commit is not the head of the branch"}, status_code=412)
    with LOCK:
        files = dict(repo["commits"][head]["files"])
        for item in lines[1:]:
            k, v = item["key"], item["value"]
            if k == "file":
                data = base64.b64decode(v["content"]) if v.get("encoding") == "base64" else v["content"].encode()
                files[v["path"]] = {
                    "sha256": put_blob(data),
                    "size": len(data),
                    "lfs": False,
                    "git_oid": git_oid(data),
                }
            elif k == "lfsFile":
                if not os.path.exists(blob_path(v["oid"])):
                    return JSONResponse({"error": f"LFS object {v['oid']} not uploaded"}, status_code=400)
                size = v.get("size") or os.path.getsize(blob_path(v["oid"]))
                files[v["path"]] = {
                    "sha256": v["oid"],
                    "size": size,
                    "lfs": True,
                    "git_oid": git_oid(lfs_pointer(v["oid"], size)),
                }
            elif k == "deletedFile":
                if files.pop(v["path"], None) is None:
                    return ERR("EntryNotFound", f"{v['path']} not found", 404)
            elif k == "deletedFolder":
                for p in [p for p in files if p.startswith(v["path"].rstrip("/") + "/")]:
                    del files[p]
            else:
                return JSONResponse({"error": f"unsupported commit op {k}"}, status_code=400)
        oid = new_commit(repo, files, header.get("summary", ""), branch)
    return {
        "commitUrl": f"{base_url(request)}/{PREFIX[rtype]}{org}/{name}/commit/{oid}",
        "commitOid": oid,
        "pullRequestUrl": None,
        "success": True,
    }


# ---------------------------------------------------------------- download: resolve (HEAD + GET with Range)
def _resolve(rtype: str, org: str, name: str, rev: str, path: str, request: Request):
    repo, oid, error = repo_at(rtype, f"{org}/{name}", rev)
    if error:
        return error
    path = unquote(path)
    f = repo["commits"][oid]["files"].get(path)
    if f is None:
        return ERR("EntryNotFound", f"Entry not found: {path}")
    etag = f'"{f["sha256"] if f["lfs"] else f["git_oid"]}"'
    headers = {"X-Repo-Commit": oid, "ETag": etag, "Accept-Ranges": "bytes"}
    if f["lfs"]:
        headers["X-Linked-Etag"] = etag
        headers["X-Linked-Size"] = str(f["size"])
    if request.method == "HEAD":
        headers["Content-Length"] = str(f["size"])
        return Response(status_code=200, headers=headers)
    resp = FileResponse(blob_path(f["sha256"]), headers=headers, media_type="application/octet-stream")
    return resp


for _rt, _pfx in (("dataset", "/datasets"), ("space", "/spaces"), ("model", "")):

    def _make(rt):
        async def handler(org: str, name: str, rev: str, path: str, request: Request):
            return _resolve(rt, org, name, rev, path, request)

        return handler

    app.add_api_route(_pfx + "/{org}/{name}/resolve/{rev}/{path:path}", _make(_rt), methods=["GET", "HEAD"])


@app.get("/_log")
async def get_log():
    """Every request served so far, one ``METHOD path -> status`` line each (tests count them)."""
    return LOG


@app.post("/_faults")
async def set_faults(request: Request):
    """Arm (or, with ``{}``, clear) injected faults; see :data:`FAULTS`."""
    body = await request.json()
    with LOCK:
        FAULTS.clear()
        FAULTS.update({k: int(v) for k, v in body.items() if k == "fail_lfs_put_after"})
    return dict(FAULTS)


@app.api_route("/{full:path}", methods=["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"])
async def fallback(full: str, request: Request):
    return ERR("EntryNotFound", f"mini_hub: no route for {request.method} /{full}")


@dataclass
class HubArguments:
    """Where the stand-in Hub listens and keeps its repos."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind (loopback is intended)."})
    port: int = field(default=18900, metadata={"help": "Port to listen on."})
    storage: str = field(
        default=os.environ.get("GEOLLAVA_HUB_STORAGE", "hub-storage"),
        metadata={"help": "Folder for blobs and the repo index (repos persist across restarts)."},
    )

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ValueError(f"port: {self.port} is not a TCP port (1-65535)")
        if os.path.exists(self.storage) and not os.path.isdir(self.storage):
            raise ValueError(f"storage: {self.storage!r} exists and is not a folder")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``geollava-hub``."""
    import uvicorn
    from transformers import HfArgumentParser

    global ROOT
    parser = HfArgumentParser(HubArguments, prog="geollava-hub", description=__doc__.splitlines()[0])
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        print(f"geollava-hub: {err}", file=sys.stderr)
        return 2
    ROOT = args.storage
    os.makedirs(ROOT, exist_ok=True)
    load_index()
    print(
        f"geollava-hub: serving http://{args.host}:{args.port} from {ROOT} "
        f"({len(REPOS)} repos; a stand-in for tests and offline staging, not a Hub)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
