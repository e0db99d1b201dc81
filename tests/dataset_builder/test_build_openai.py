"""`geollava-build --annotator openai` end to end against a local OpenAI-compatible server (the real client)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from datasets import load_dataset
from fmow_fixtures import write_image

from dataset_builder.build import main


class _ChatCompletions(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        images = [part for part in body["messages"][-1]["content"] if part.get("type") == "image_url"]
        answer = f"First image: a field. Second image: a building. ({len(images)} images seen)"
        payload = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220},
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def openai_server(monkeypatch):
    _ChatCompletions.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-never-logged-0000")
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_build_with_the_openai_annotator(openai_server, tmp_path):
    fmow = tmp_path / "fmow"
    for loc in range(2):
        write_image(fmow, "train", "barn", loc, 0, "2010-01-01T00:00:00Z")
        write_image(fmow, "train", "barn", loc, 1, "2012-01-01T00:00:00Z")
    write_image(fmow, "val", "dam", 0, 0, "2010-01-01T00:00:00Z")
    write_image(fmow, "val", "dam", 0, 1, "2012-01-01T00:00:00Z")
    args = ["--fmow-root", str(fmow), "--out", str(tmp_path / "out"), "--frame-size", "32", "--annotator", "openai"]
    args += ["--base-url", openai_server, "--model", "gpt-4o-mini", "--concurrency", "2"]
    args += ["--cache-path", str(tmp_path / "cache.jsonl"), "--report-path", str(tmp_path / "annotation_report.json")]
    assert main(args) == 0
    assert len(_ChatCompletions.requests) == 3
    for split, n in (("train", 2), ("test", 1)):
        ds = load_dataset(str(tmp_path / "out"), split=split)
        assert ds.num_rows == n
        assert all(c[1]["value"].endswith("(2 images seen)") for c in ds["conversations"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "gpt-4o-mini" in card and "Briefly describe each image independently" in card
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md", ".jsonl"):
            assert "sk-test-never-logged" not in path.read_text()
    # a rerun with a faster setting resumes: nothing is asked again
    assert main([*args, "--concurrency", "4"]) == 0
    assert len(_ChatCompletions.requests) == 3
