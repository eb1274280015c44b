"""The code has no undefined names, unused imports or syntax errors (ruff's pyflakes rules), so a
rename that misses a caller fails here, not on a user's machine."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_no_pyflakes_errors():
    # --isolated: the same rules whatever ruff config a developer has in their home directory
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F,E9", "--no-cache",
                          "--extend-exclude", "runs", str(ROOT)], capture_output=True, text=True, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
