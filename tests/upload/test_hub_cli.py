"""geollava-hub as a command: the optional `hub` extra, its flags, and what it refuses before serving."""

import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
# Runs Python as if the `hub` extra were not installed: importing fastapi or uvicorn fails as a missing module would.
WITHOUT_EXTRA = "import sys\nfor m in ('fastapi', 'uvicorn'): sys.modules[m] = None\n"


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_without_the_hub_extra_the_command_names_the_install(tmp_path):
    code = WITHOUT_EXTRA + "from upload.hub_server import main\nsys.exit(main(sys.argv[1:]))"
    proc = _python(code, "--port", "18999", "--storage", str(tmp_path / "s"))
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'geollava[hub]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_base_install_imports_without_the_hub_extra():
    code = WITHOUT_EXTRA + "import upload.push, upload.loopback, upload.staging, upload.hub_server\nprint('ok')"
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_bad_flags_exit_2_with_the_field_named(tmp_path):
    (tmp_path / "a-file").write_text("x")
    for flags, field in ((["--port", "70000"], "port"), (["--storage", str(tmp_path / "a-file")], "storage")):
        proc = _python("import sys\nfrom upload.hub_server import main\nsys.exit(main(sys.argv[1:]))", *flags)
        assert proc.returncode == 2, proc.stderr
        assert f"geollava-hub: {field}:" in proc.stderr
