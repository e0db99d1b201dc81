"""The harness installs beside the project's tests: a distribution's top-level ``tests`` package cannot shadow them.

lmms-eval's dependency latex2sympy2 installs one into site-packages; a namespace package loses to any regular package
of the same name wherever it sits on ``sys.path``, so the project's ``tests`` is a regular package.
"""

import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def test_the_checkouts_tests_package_wins_over_an_installed_one(tmp_path):
    site = tmp_path / "site-packages"
    (site / "tests").mkdir(parents=True)
    (site / "tests" / "__init__.py").write_text("SHADOW = True\n")
    code = (
        f"import sys; sys.path.append({str(site)!r})\n"
        "import tests, tests.trainer.helpers, tests.harness.helpers\n"
        "print(tests.__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(ROOT / "tests" / "__init__.py")
