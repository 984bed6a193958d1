"""Each demo run logs to a path of its own, so two demos never overwrite each other (issue 10, 13)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge.demo import demo_log_path


def test_two_runs_in_one_process_get_different_log_files(tmp_path: Path) -> None:
    """Two runs started in the same second by the same process still get separate directories."""
    first, second = demo_log_path(tmp_path), demo_log_path(tmp_path)
    assert first != second
    assert first.parent.is_dir()
    assert second.parent.is_dir()
    first.write_text("one")
    second.write_text("two")
    assert first.read_text() == "one"


def test_two_demo_processes_get_different_log_files(tmp_path: Path) -> None:
    """Two demo processes at once: each path names its process, and neither is the other's."""
    code = "import sys; from pathlib import Path; from edge.demo import demo_log_path; print(demo_log_path(Path(sys.argv[1])))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    pids = [p.pid for p in procs]
    paths = [Path(o) for o in outs]
    assert paths[0] != paths[1]
    for path, pid in zip(paths, pids, strict=True):
        assert path.parent.parent == tmp_path / "dos-edge-demo"
        assert f"-{pid}-" in path.parent.name
