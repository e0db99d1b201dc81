"""`make demo`: serve the Space locally on the quickstart's tiny model and print the URL.

make demo            # after `make quickstart`
BASE_MODEL_ID=... ADAPTER_ID=... make demo   # any other base + adapter (local paths or Hub ids)
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

from upload.loopback import free_port


ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "outputs" / "quickstart"


def demo_port(preferred: int = 7860) -> int:
    """Gradio's usual port when it is free, else any free one."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    return free_port()


def main() -> int:
    env = dict(os.environ)
    env.setdefault("BASE_MODEL_ID", str(QUICKSTART / "base"))
    env.setdefault("ADAPTER_ID", str(QUICKSTART / "adapter"))
    for key in ("BASE_MODEL_ID", "ADAPTER_ID"):
        value = env[key]
        if value.startswith(("/", ".")) and not Path(value).exists():
            print(
                f"{key}={value} does not exist: run `make quickstart` first, or set {key} to a model path or Hub id."
            )
            return 1
    port = int(env.get("GRADIO_SERVER_PORT") or demo_port())
    env["GRADIO_SERVER_PORT"] = str(port)
    env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    print(f"GeoLLaVA demo on http://127.0.0.1:{port}  (base: {env['BASE_MODEL_ID']}, adapter: {env['ADAPTER_ID']})")
    print("Stop it with Ctrl-C.", flush=True)
    return subprocess.call([sys.executable, str(ROOT / "spaces_demo" / "app.py")], env=env)


if __name__ == "__main__":
    sys.exit(main())
