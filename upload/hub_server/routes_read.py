"""Read routes: whoami, repo info, refs, commits, tree, paths-info, and file downloads (resolve)."""

from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from upload.hub_server.payloads import (
    Refused,
    bad_request,
    file_entry,
    folder_entry,
    hub_error,
    repo_info_payload,
    tree_entries,
)
from upload.hub_server.state import TYPES, HubState
from upload.hub_server.validation import path_problem, repo_id_problem


router = APIRouter()
TREE_PAGE, TREE_PAGE_EXPANDED = 1000, 50


def hub(request: Request) -> HubState:
    """The server's state."""
    return request.app.state.hub


def find_repo(request: Request, rtype: str | None, repo_id: str) -> dict:
    """The repo, or :class:`Refused`: 400 for an invalid repo id, the Hub's RepoNotFound for a missing one."""
    problem = repo_id_problem(repo_id)
    if problem:
        raise Refused(bad_request("InvalidRepoId", problem))
    repo = hub(request).store.get_repo(rtype, repo_id)
    if not repo:
        raise Refused(hub_error("RepoNotFound", "Repository not found"))
    return repo


def refused_path(request: Request, path: str) -> JSONResponse | None:
    """The 400 for a path the Hub refuses (``None`` when it is good, or when the server serves hostile trees)."""
    problem = None if hub(request).hostile_trees else path_problem(path)
    return bad_request("InvalidPath", problem) if problem else None


def repo_at(request: Request, rtype: str | None, repo_id: str, rev: str) -> tuple[dict, str]:
    """``(repo, commit oid)``, or :class:`Refused` with the Hub's RepoNotFound / RevisionNotFound."""
    repo = find_repo(request, rtype, repo_id)
    oid = hub(request).store.resolve_rev(repo, rev)
    if not oid:
        raise Refused(hub_error("RevisionNotFound", f"Invalid rev id: {rev}"))
    return repo, oid


@router.get("/api/whoami-v2")
async def whoami():
    """The single user of the server, with write access and one org."""
    return {
        "type": "user",
        "name": "tester",
        "fullname": "Test User",
        "orgs": [{"name": "geo-org", "type": "org"}],
        "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
    }


@router.get("/api/{rtypes}/{org}/{name}")
@router.get("/api/{rtypes}/{org}/{name}/revision/{rev:path}")
async def repo_info(rtypes: str, org: str, name: str, request: Request, rev: str = "main"):
    """``model_info`` / ``dataset_info`` / ``space_info`` (optionally at a revision)."""
    rtype, repo_id = TYPES.get(rtypes), f"{org}/{name}"
    repo, oid = repo_at(request, rtype, repo_id, rev)
    return repo_info_payload(hub(request).store, rtype, repo_id, repo, oid)


@router.get("/api/{rtypes}/{org}/{name}/refs")
async def refs(rtypes: str, org: str, name: str, request: Request):
    """The repo's branches (no tags, no converts)."""
    repo = find_repo(request, TYPES.get(rtypes), f"{org}/{name}")
    branches = sorted(hub(request).store.branches(repo).items())
    return {
        "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in branches],
        "tags": [],
        "converts": [],
    }


@router.get("/api/{rtypes}/{org}/{name}/commits/{rev:path}")
async def commits(rtypes: str, org: str, name: str, rev: str, request: Request):
    """The history from ``rev`` back to the repo's first commit."""
    repo = find_repo(request, TYPES.get(rtypes), f"{org}/{name}")
    store = hub(request).store
    return [
        {"id": c["oid"], "title": c["message"], "message": "", "date": c["date"], "authors": [{"user": "tester"}]}
        for c in store.history(repo, store.resolve_rev(repo, rev))
    ]


@router.get("/api/{rtypes}/{org}/{name}/tree/{rev}")
@router.get("/api/{rtypes}/{org}/{name}/tree/{rev}/{path:path}")
async def tree(rtypes: str, org: str, name: str, rev: str, request: Request, path: str = ""):
    """The entries of a folder (the root by default), recursively with ``?recursive=true``."""
    repo, oid = repo_at(request, TYPES.get(rtypes), f"{org}/{name}", rev)
    path = path.strip("/")
    refused = path and refused_path(request, path)
    if refused:
        return refused
    files = hub(request).store.files_at(repo, oid)
    if path and path in files:
        return hub_error("EntryNotFound", f"{path} is a file, not a folder")
    if path and not any(p.startswith(path + "/") for p in files):
        return hub_error("EntryNotFound", f"{path} does not exist on {rev}")
    query = request.query_params
    recursive = query.get("recursive", "false").lower() in ("1", "true")
    entries = hub(request).listing((oid, path, recursive), lambda: tree_entries(files, path, recursive))
    # Pages as on the Hub: 1,000 entries (50 with expand), the next page's URL in a `Link` header.
    size = TREE_PAGE_EXPANDED if query.get("expand", "false").lower() in ("1", "true") else TREE_PAGE
    start = int(query.get("cursor", "0") or 0)
    page = entries[start : start + size]
    if start + size >= len(entries):
        return page
    url = request.url.include_query_params(cursor=str(start + size))
    return JSONResponse(page, headers={"Link": f'<{url}>; rel="next"'})


@router.post("/api/{rtypes}/{org}/{name}/paths-info/{rev:path}")
async def paths_info(rtypes: str, org: str, name: str, rev: str, request: Request):
    """The entries of the given paths (form-encoded ``paths=a&paths=b``, or JSON); missing paths are left out."""
    repo, oid = repo_at(request, TYPES.get(rtypes), f"{org}/{name}", rev)
    if "json" in request.headers.get("content-type", ""):
        paths = (await request.json()).get("paths", [])
    else:
        paths = parse_qs((await request.body()).decode()).get("paths", [])
    paths = [p.strip("/") for p in paths]
    refused = next(filter(None, (refused_path(request, p) for p in paths if p)), None)
    if refused:
        return refused
    files = hub(request).store.files_at(repo, oid)
    out = []
    for p in paths:
        if p in files:
            out.append(file_entry(p, files[p]))
        elif p == "" or any(f.startswith(p + "/") for f in files):
            out.append(folder_entry(p))
    return out


async def resolve(rtype: str, org: str, name: str, rev: str, path: str, request: Request):
    """A file's bytes (``GET``, with ``Range``) or headers (``HEAD``), as the Hub's ``resolve`` answers."""
    repo, oid = repo_at(request, rtype, f"{org}/{name}", rev)
    refused = refused_path(request, path)
    if refused:
        return refused
    store = hub(request).store
    f = store.files_at(repo, oid).get(path)
    if f is None:
        return hub_error("EntryNotFound", f"Entry not found: {path}")
    etag = f'"{f["sha256"] if f["lfs"] else f["git_oid"]}"'
    headers = {"X-Repo-Commit": oid, "ETag": etag, "Accept-Ranges": "bytes"}
    if f["lfs"]:
        headers["X-Linked-Etag"] = etag
        headers["X-Linked-Size"] = str(f["size"])
    if request.method == "HEAD":
        headers["Content-Length"] = str(f["size"])
        return Response(status_code=200, headers=headers)
    return FileResponse(store.blob_path(f["sha256"]), headers=headers, media_type="application/octet-stream")


def _resolve_route(rtype: str):
    async def handler(org: str, name: str, rev: str, path: str, request: Request):
        return await resolve(rtype, org, name, rev, path, request)

    return handler


for _rtype, _prefix in (("dataset", "/datasets"), ("space", "/spaces"), ("model", "")):
    router.add_api_route(
        _prefix + "/{org}/{name}/resolve/{rev}/{path:path}", _resolve_route(_rtype), methods=["GET", "HEAD"]
    )
