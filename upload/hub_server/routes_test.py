"""Test hooks, which the Hub does not have: the request log, injected faults, and (by a switch) hostile trees."""

from fastapi import APIRouter, Request

from upload.hub_server.payloads import bad_request, hub_error
from upload.hub_server.routes_read import hub
from upload.hub_server.store import regular_entry


router = APIRouter()

#: The faults ``POST /_faults`` can arm (see :class:`upload.hub_server.state.HubState`).
FAULTS = ("fail_lfs_put_after", "fail_commit_after")


@router.get("/_log")
async def get_log(request: Request):
    """Every request served so far, one ``METHOD path -> status`` line each (tests count them)."""
    return hub(request).log


@router.post("/_faults")
async def set_faults(request: Request):
    """Arm (or, with ``{}``, clear) injected faults."""
    body = await request.json()
    faults = hub(request).faults
    faults.clear()
    faults.update({k: int(v) for k, v in body.items() if k in FAULTS})
    return dict(faults)


@router.post("/_hostile")
async def plant_hostile_tree(request: Request):
    """TEST ONLY (``--allow-hostile-trees``): commit ``{"files": {path: text}}`` to a repo, paths unchecked.

    The body: ``{"repo_type": "model", "repo_id": "ORG/NAME", "files": {"../../escape.txt": "..."}}``; the repo is
    created when missing. Downloads are then tested against trees holding ``..`` or absolute paths, as a malicious
    Hub (or a compromised repo) could serve.
    """
    state = hub(request)
    if not state.hostile_trees:
        return hub_error("EntryNotFound", "geollava-hub: /_hostile needs --allow-hostile-trees")
    body = await request.json()
    rtype, repo_id, files = body.get("repo_type", "model"), body.get("repo_id"), body.get("files")
    if not isinstance(repo_id, str) or not isinstance(files, dict):
        return bad_request("InvalidRequest", "expected {repo_type, repo_id, files: {path: text}}")
    store = state.store
    store.create_repo(rtype, repo_id, private=False, sdk="gradio" if rtype == "space" else None)
    repo = store.get_repo(rtype, repo_id)
    changes = {path: regular_entry(text.encode(), store.put_blob(text.encode())) for path, text in files.items()}
    return {"commitOid": store.new_commit(repo, changes, "hostile tree (test hook)")}
