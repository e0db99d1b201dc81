"""The Batch API path of the OpenAI annotator (``--batch``): half the price, answers within 24 h.

Requests are written as JSONL (at most ``batch_max_requests`` lines and 190 MB a file), uploaded, and one batch is
created per file; then the batches are polled until they end, their output files downloaded and every answer
appended to the same cache as the synchronous path. A state file beside the cache
(``<cache>.batches.json``, rewritten atomically) records each upload and batch the moment it exists, so a run
restarted while a batch is ``in_progress`` picks it up instead of paying for it again; an upload whose batch
creation was cut short is matched against ``batches.list`` before anything is sent again.
"""

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import openai
from openai.types.chat import ChatCompletion

from dataset_builder.annotation.base import AnnotationRequest, AnnotationResult
from dataset_builder.annotation.cache import sha256_hex
from dataset_builder.annotation.openai_requests import PlannedRequest, classify_completion
from dataset_builder.annotation.transport import RetryPolicy, client_options
from dataset_builder.atomic import write_json


logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 190 * 1024 * 1024
TERMINAL = ("completed", "failed", "expired", "cancelled")


def state_path(cache_path: Path) -> Path:
    """The batch state file that goes with a cache file."""
    return cache_path.with_name(f"{cache_path.stem}.batches.json")


def _load_state(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"uploads": {}, "batches": {}}


def _save_state(path: Path, state: dict) -> None:
    write_json(path, state, indent=None, fsync=True)


def custom_id(key: str) -> str:
    """The ``custom_id`` of a request: a hash of its cache key (unique, and free of the pair's details)."""
    return sha256_hex(key)[:32]


def _chunks(lines: list[tuple[str, bytes]], max_requests: int) -> Iterator[list[tuple[str, bytes]]]:
    chunk, size = [], 0
    for cid, line in lines:
        if chunk and (len(chunk) >= max_requests or size + len(line) > MAX_FILE_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append((cid, line))
        size += len(line)
    if chunk:
        yield chunk


def run_batch(annotator, to_send: list, api_key: str) -> Iterator[AnnotationResult]:
    """Send ``to_send`` through the Batch API (resuming batches a previous run left) and yield their results.

    Args:
        annotator: The ``OpenAIAnnotator`` (its config, cache, counters and ``record``/``fail``).
        to_send: Its ``PlannedRequest`` objects not answered yet.
        api_key: The API key.

    Yields:
        One result per request of ``to_send``.
    """
    cfg = annotator.config
    client = openai.OpenAI(**client_options(cfg, api_key))
    path = state_path(cfg.resolved_cache_path)
    state = _load_state(path)
    wanted = {p.key: p for p in to_send}
    done: dict[str, AnnotationResult] = {}
    reserved: set[str] = set()  # budget reservations made by this run (released when the answer is counted)

    call = RetryPolicy.from_config(cfg, annotator.stats.retries_by_reason).call

    # 1. uploads whose batch creation was cut short: adopt the batch if it exists, else forget the upload
    if state["uploads"]:
        existing = {b.input_file_id: b for b in call(client.batches.list, limit=100).data}
        for file_id, entry in list(state["uploads"].items()):
            if file_id in existing:
                state["batches"][existing[file_id].id] = {**entry, "input_file_id": file_id, "merged": False}
                logger.info("batch %s (created before a restart) adopted", existing[file_id].id)
            del state["uploads"][file_id]
        _save_state(path, state)

    # 2. new batches for what no batch holds yet
    in_batches = {item["key"] for b in state["batches"].values() if not b["merged"] for item in b["requests"].values()}
    pending = [p for p in to_send if p.key not in in_batches]
    if pending:
        _submit(annotator, client, call, pending, state, path, done, reserved)

    # 3. poll every unmerged batch to its end, then merge its answers into the cache
    active = [bid for bid, b in state["batches"].items() if not b["merged"]]
    last_seen: dict[str, tuple] = {}
    while active:
        for bid in list(active):
            batch = call(client.batches.retrieve, bid)
            counts = batch.request_counts
            progress = (batch.status, counts.model_dump() if counts else None)
            if last_seen.get(bid) != progress:  # log changes only: a batch can take hours
                logger.info("batch %s: %s %s", bid, *progress)
                last_seen[bid] = progress
            if batch.status in TERMINAL:
                _merge(annotator, client, call, batch, state["batches"][bid], wanted, done, reserved)
                state["batches"][bid]["merged"] = True
                state["batches"][bid]["status"] = batch.status
                _save_state(path, state)
                annotator.stats.batches.append(
                    {"id": bid, "status": batch.status, "request_counts": counts.model_dump() if counts else None}
                )
                active.remove(bid)
        if active:
            time.sleep(cfg.batch_poll_s)
    client.close()
    for planned in to_send:
        yield done.get(planned.key) or annotator.fail(planned, "batch: no answer for this request")


def _submit(annotator, client, call, pending: list, state: dict, path: Path, done: dict, reserved: set) -> None:
    cfg = annotator.config
    lines: list[tuple[str, bytes]] = []
    entries: dict[str, dict] = {}
    for planned in pending:
        if not annotator.budget.reserve(planned.input_tokens):
            done[planned.key] = annotator.budget_result(planned)
            continue
        reserved.add(planned.key)
        cid = custom_id(planned.key)
        body = {
            "custom_id": cid,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": annotator.planner.chat_body(planned),
        }
        lines.append((cid, (json.dumps(body) + "\n").encode("utf-8")))
        entries[cid] = {
            "key": planned.key,
            "id": planned.request.id,
            "image_hash": planned.image_hash,
            "input_tokens": planned.input_tokens,
        }
    for chunk in _chunks(lines, cfg.batch_max_requests):
        requests = {cid: entries[cid] for cid, _ in chunk}
        data = b"".join(line for _, line in chunk)
        uploaded = call(client.files.create, file=("geollava_batch_input.jsonl", data), purpose="batch")
        state["uploads"][uploaded.id] = {"requests": requests}
        _save_state(path, state)
        batch = call(
            client.batches.create,
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"geollava": "annotation", "params": annotator.params_hash[:16]},
        )
        state["batches"][batch.id] = {"requests": requests, "input_file_id": uploaded.id, "merged": False}
        del state["uploads"][uploaded.id]
        _save_state(path, state)
        annotator.stats.sent += len(chunk)
        annotator.stats.requests += len(chunk)
        logger.info("batch %s created: %d request(s), %.1f MB", batch.id, len(chunk), len(data) / 1e6)


def _merge(annotator, client, call, batch, entry: dict, wanted: dict, done: dict, reserved: set) -> None:
    requests = entry["requests"]
    seen: set[str] = set()
    for file_id, is_error in ((batch.output_file_id, False), (batch.error_file_id, True)):
        if not file_id:
            continue
        for line in call(client.files.content, file_id).text.splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            item = requests.get(row.get("custom_id"))
            if item is None:
                logger.warning("batch %s: unknown custom_id %r skipped", batch.id, row.get("custom_id"))
                continue
            seen.add(row["custom_id"])
            planned = wanted.get(item["key"]) or PlannedRequest(
                AnnotationRequest(item["id"], (Path(), Path())),
                item["key"],
                item["image_hash"],
                [],
                item["input_tokens"],
            )
            response = row.get("response") or {}
            if is_error or row.get("error") or response.get("status_code") != 200:
                error = row.get("error") or response.get("body", {}).get("error") or {}
                reason = f"batch error: {error.get('code') or response.get('status_code')} {error.get('message', '')}"
                result = annotator.fail(planned, reason.strip())
            else:
                try:
                    completion = ChatCompletion.model_validate(response["body"])
                    status, text, reason = classify_completion(completion)
                    usage = completion.usage.model_dump(exclude_none=True) if completion.usage else {}
                except (ValueError, TypeError, KeyError) as err:
                    status, text, reason, usage = "malformed", None, f"unreadable reply: {str(err)[:200]}", {}
                result = annotator.record(planned, status, text, reason, usage)
            if item["key"] in reserved:
                annotator.budget.release(item["input_tokens"])
            done[item["key"]] = result
    for cid, item in requests.items():
        if cid not in seen and item["key"] in wanted:
            if item["key"] in reserved:
                annotator.budget.release(item["input_tokens"])
            done[item["key"]] = annotator.fail(wanted[item["key"]], f"batch {batch.status}: no answer")
