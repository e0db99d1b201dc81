"""`make demo`: serve the Space locally on the quickstart's tiny model and print the URL.

make demo                                        # after `make quickstart`: its base and adapter, from its loopback Hub
QUICKSTART_OUT=outputs/quickstart-ci make demo   # another quickstart run (--profile/--out)
BASE_MODEL_ID=... ADAPTER_ID=... make demo       # any other base + adapter (local paths, or Hub ids on HF_ENDPOINT)

A quickstart run is served as a Hub user meets it: its loopback Hub is started on the run's storage, and the Space
loads the base and the adapter by the Hub ids the run pushed (its report.json names them).
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from upload.loopback import free_port, serve_hub


ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "outputs" / "quickstart"
#: The loopback Hub accepts any token (the Space only reads).
LOCAL_TOKEN = "hf_quickstart_local_token"


def demo_port(preferred: int = 7860) -> int:
    """Gradio's usual port when it is free, else any free one."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    return free_port()


def quickstart_repos(out: Path) -> dict | None:
    """The Hub ids a finished quickstart run in ``out`` pushed (its report.json), or None when there is none."""
    report = out / "report.json"
    if not report.is_file() or not (out / "hub" / "index.json").is_file():
        return None
    repos = json.loads(report.read_text()).get("repos") or {}
    return repos if {"base", "model"} <= set(repos) else None


def main() -> int:
    env = dict(os.environ)
    hub = contextlib.nullcontext(None)
    if not env.get("BASE_MODEL_ID") and not env.get("ADAPTER_ID"):
        out = Path(env.get("QUICKSTART_OUT") or QUICKSTART).resolve()
        repos = quickstart_repos(out)
        if repos is None:
            print(f"{out}: no finished quickstart run there: run `make quickstart` first, or set BASE_MODEL_ID.")
            return 1
        env.update(BASE_MODEL_ID=repos["base"], ADAPTER_ID=repos["model"])
        env.update(HF_HUB_DISABLE_XET="1", HF_TOKEN=LOCAL_TOKEN, HF_HOME=str(out / "hf_home"))
        hub = serve_hub(out / "hub", log_path=out / "logs" / "geollava-hub-demo.log")
    for key in ("BASE_MODEL_ID", "ADAPTER_ID"):
        value = env.get(key, "")
        if value.startswith(("/", ".")) and not Path(value).exists():
            print(f"{key}={value} does not exist: set {key} to a model path or Hub id.")
            return 1
    port = int(env.get("GRADIO_SERVER_PORT") or demo_port())
    env["GRADIO_SERVER_PORT"] = str(port)
    env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    with hub as url:
        if url:
            env["HF_ENDPOINT"] = url
        where = f" from the loopback Hub {url}" if url else ""
        print(
            f"GeoLLaVA demo on http://127.0.0.1:{port}  (base: {env.get('BASE_MODEL_ID')}, "
            f"adapter: {env.get('ADAPTER_ID')}{where})"
        )
        print("Stop it with Ctrl-C.", flush=True)
        return subprocess.call([sys.executable, str(ROOT / "spaces_demo" / "app.py")], env=env)


if __name__ == "__main__":
    sys.exit(main())
