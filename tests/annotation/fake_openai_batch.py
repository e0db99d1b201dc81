"""The Files and Batches endpoints of the fake OpenAI server (``fake_openai.py``), with the Batch API's limits.

An input file over ``state.batch_max_requests`` lines or ``state.batch_max_bytes`` bytes is refused at batch
creation (HTTP 400, OpenAI's wording); a batch past ``state.max_enqueued_tokens`` is created ``failed`` with
``token_limit_exceeded``, as OpenAI does. See docs/annotation.md.
"""

import json
import time
import uuid
from collections.abc import Callable

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response


def add_file_and_batch_routes(app: FastAPI, state, answer: Callable, count_tokens: Callable) -> None:
    """Serve ``/v1/files`` and ``/v1/batches`` from ``state`` (a ``FakeState``).

    Args:
        app: The app.
        state: What the server has seen and is told to do.
        answer: ``answer(body, state, fault) -> completion dict`` (counts what is billed).
        count_tokens: ``count_tokens(body) -> prompt tokens`` (for the enqueued-token limit).
    """
    _file_routes(app, state)
    _batch_routes(app, state, answer, count_tokens)

    @app.middleware("http")
    async def batch_faults(request: Request, call_next):
        """One fault of ``state.batch_faults`` per Files/Batches call: "429" (with retry-after), "500", "503" refuse
        the call; "lost" makes it, then answers 500 (the reply lost on the way); "pass" lets it through."""
        fault = None
        if request.url.path.startswith(("/v1/files", "/v1/batches")) and state.batch_faults:
            fault = state.batch_faults.popleft()
        if fault in (None, "pass", "lost"):
            response = await call_next(request)
            return refusal(500, "the reply was lost") if fault == "lost" else response
        headers = {"retry-after-ms": "20"} if fault == "429" else None
        return refusal(int(fault), f"fault {fault}", headers=headers)


def refusal(status: int, message: str, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return JSONResponse({"error": error}, status, headers=headers)


def _file_routes(app: FastAPI, state) -> None:
    @app.post("/v1/files")
    async def upload(file: UploadFile = File(...), purpose: str = Form(...)):  # noqa: B008 - FastAPI idiom
        data = await file.read()
        fid = f"file-{uuid.uuid4().hex[:12]}"
        state.files[fid] = {"bytes": data, "filename": file.filename, "purpose": purpose}
        return _file_obj(fid, state)

    @app.get("/v1/files/{fid}")
    async def file_info(fid: str):
        return _file_obj(fid, state)

    @app.get("/v1/files/{fid}/content")
    async def file_content(fid: str):
        if fid not in state.files:
            return refusal(404, f"No such File object: {fid}")
        return Response(state.files[fid]["bytes"], media_type="application/octet-stream")


def _batch_routes(app: FastAPI, state, answer: Callable, count_tokens: Callable) -> None:
    @app.post("/v1/batches")
    async def create_batch(request: Request):
        body = await request.json()
        data = state.files[body["input_file_id"]]["bytes"]
        lines = data.decode().splitlines()
        model = json.loads(lines[0])["body"].get("model", "gpt-4o-mini") if lines else "gpt-4o-mini"
        if len(data) > state.batch_max_bytes:
            return refusal(
                400,
                f"The batch input file is larger than the {state.batch_max_bytes} maximum for the {model} model. "
                "Please try again with a smaller batch.",
            )
        if len(lines) > state.batch_max_requests:
            return refusal(
                400,
                f"The batch input file has {len(lines)} requests, more than the {state.batch_max_requests} maximum "
                f"for the {model} model. Please try again with a smaller batch.",
            )
        bid = f"batch_{uuid.uuid4().hex[:12]}"
        tokens = sum(count_tokens(json.loads(line)["body"]) for line in lines)
        state.batches[bid] = {
            "id": bid,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"],
            "status": "validating",
            "created_at": int(time.time()),
            "metadata": body.get("metadata"),
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "_polls": 0,
            "_tokens": tokens,
        }
        limit = state.max_enqueued_tokens
        if limit is not None and state.enqueued_tokens() > limit:
            state.batches[bid] |= {"status": "failed", "errors": _token_limit_errors(model, limit)}
        state.peak_enqueued_tokens = max(state.peak_enqueued_tokens, state.enqueued_tokens())
        return _public(state.batches[bid])

    @app.get("/v1/batches/{bid}")
    async def get_batch(bid: str):
        if bid not in state.batches:
            return refusal(404, f"No batch found with id '{bid}'.")
        # every poll moves every batch on, as time does at OpenAI: a batch nobody polls (its creator was killed
        # before it learnt the id) is processed, and billed, all the same
        for batch in list(state.batches.values()):
            batch["_polls"] += 1
            if batch["status"] == "validating":
                batch["status"] = "in_progress"
            elif (
                batch["status"] == "in_progress"
                and not state.hold_batches
                and batch["_polls"] > state.batch_polls_to_finish
            ):
                _finish_batch(batch, state, answer)
        return _public(state.batches[bid])

    @app.get("/v1/batches")
    async def list_batches(limit: int = 20):
        data = [_public(b) for b in reversed(state.batches.values())][:limit]
        return {
            "object": "list",
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    @app.post("/v1/batches/{bid}/cancel")
    async def cancel_batch(bid: str):
        state.batches[bid]["status"] = "cancelled"
        return _public(state.batches[bid])


def _token_limit_errors(model: str, limit: int) -> dict:
    message = (
        f"Enqueued token limit reached for {model} in organization org-fake. Limit: {limit:,} enqueued tokens. "
        "Please try again once some in_progress batches have been completed."
    )
    data = [{"code": "token_limit_exceeded", "message": message, "param": None, "line": None}]
    return {"object": "list", "data": data}


def _file_obj(fid: str, state) -> dict:
    f = state.files[fid]
    return {
        "id": fid,
        "object": "file",
        "bytes": len(f["bytes"]),
        "created_at": int(time.time()),
        "filename": f["filename"],
        "purpose": f["purpose"],
        "status": "processed",
    }


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _finish_batch(batch: dict, state, answer: Callable) -> None:
    out, err = [], []
    for line in state.files[batch["input_file_id"]]["bytes"].decode().splitlines():
        item = json.loads(line)
        with state.lock:
            state.requests += 1
            fault = state.faults.popleft() if state.faults else state.always
        if fault in ("500", "503", "429"):
            err.append(
                {
                    "id": f"batch_req_{uuid.uuid4().hex[:8]}",
                    "custom_id": item["custom_id"],
                    "response": None,
                    "error": {"code": "server_error", "message": f"fault {fault}"},
                }
            )
            continue
        reply = answer(item["body"], state, fault)
        out.append(
            {
                "id": f"batch_req_{uuid.uuid4().hex[:8]}",
                "custom_id": item["custom_id"],
                "response": {"status_code": 200, "request_id": uuid.uuid4().hex, "body": reply},
                "error": None,
            }
        )
    for rows, name in ((out, "output_file_id"), (err, "error_file_id")):
        if rows:
            fid = f"file-{uuid.uuid4().hex[:12]}"
            data = "".join(json.dumps(r) + "\n" for r in rows).encode()
            state.files[fid] = {"bytes": data, "filename": f"{name}.jsonl", "purpose": "batch_output"}
            batch[name] = fid
    batch["status"] = "completed"
    batch["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
