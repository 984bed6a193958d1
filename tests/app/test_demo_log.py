"""Each demo run logs to a path of its own, so two demos never overwrite each other (issue 10, 13)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge.app.demo import demo_log_path


def test_two_runs_in_one_process_get_different_log_files(tmp_path: Path) -> None:
    """Two runs started in the same second by the same process still get separate directories."""
    first, second = demo_log_path(tmp_path), demo_log_path(tmp_path)
    assert first != second
    assert first.parent.is_dir()
    assert second.parent.is_dir()
    first.write_text("one")
    second.write_text("two")
    assert first.read_text() == "one"


def test_a_second_demo_process_gets_another_log_file(tmp_path: Path) -> None:
    """A demo in another process, started meanwhile: its path names its process and is not ours."""
    ours = demo_log_path(tmp_path)
    code = "import sys; from pathlib import Path; from edge.app.demo import demo_log_path; print(demo_log_path(Path(sys.argv[1])))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
    )
    theirs = Path(proc.stdout.strip())
    assert theirs != ours
    assert theirs.parent.parent == ours.parent.parent == tmp_path / "dos-edge-demo"
    assert theirs.parent.is_dir()
