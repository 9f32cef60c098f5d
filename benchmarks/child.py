"""What the benchmark scripts share: each measurement runs in a child process of its own (so its peak
memory and thread pool are its own) and prints one JSON line last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_child(cmd: list[str], what: str, allow_oom: bool = False) -> dict | None:
    """Run ``cmd`` in the repository root; return its last stdout line as JSON, or exit naming
    ``what`` with the tail of its stderr. With ``allow_oom``, a child that ran out of memory returns
    ``None`` instead (the caller records the row as such and goes on)."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        if allow_oom and "out of memory" in proc.stderr.lower():
            return None
        sys.exit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
