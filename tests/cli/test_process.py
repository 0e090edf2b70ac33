"""`sd3pose` as a process: it ends as soon as its command has, with the command's output and exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SD3POSE = str(Path(sys.executable).parent / "sd3pose")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SD3POSE, *args], capture_output=True, text=True, timeout=120)


def test_output_and_exit_codes_survive_the_quick_exit(tmp_path: Path) -> None:
    created = _run("keys", "create", "--name", "alice", "--credits", "5", "--data-dir", str(tmp_path))
    assert created.returncode == 0 and created.stdout.startswith("sd3p_") and "store it now" in created.stderr
    listed = _run("keys", "list", "--data-dir", str(tmp_path))
    assert listed.returncode == 0 and "alice" in listed.stdout  # what the first process wrote was committed
    missing = _run("keys", "revoke", "nobody", "--data-dir", str(tmp_path))
    assert missing.returncode == 2 and "sd3pose keys list" in missing.stderr
    assert _run("--help").returncode == 0


def test_exit_handlers_run_when_a_command_ends(tmp_path: Path) -> None:
    # Libraries do real work in exit handlers: Celery restarts a worker on SIGHUP from one.
    marker = tmp_path / "exit-handler-ran"
    entry = (
        "import atexit, pathlib, sys; from sd3pose.cli import app; "
        "atexit.register(pathlib.Path(sys.argv.pop(1)).touch); app()"
    )
    args = [str(marker), "keys", "list", "--data-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, "-c", entry, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no keys" in done.stdout
    assert marker.exists()
