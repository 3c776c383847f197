"""Files written whole: JSON and other files through a temporary sibling, folders replaced as a whole."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedmrg.io import atomic_write, load_json, recover_directory, replace_directory, replacing_directory, write_json


def test_json_keeps_text_readable_and_reads_back_the_same(tmp_path):
    data = {
        "report": "Écho normal – 肺",
        "path": "scan\udcff.png",
        "slash": "a\\\udcfe",
        "n": np.float32(1.5),
        "rows": np.arange(3),
    }
    path = tmp_path / "sub" / "out.json"
    write_json(path, data)
    text = path.read_text(encoding="utf-8")
    assert "Écho normal – 肺" in text and "\\udcff" in text  # UTF-8 as it is; a lone surrogate escaped
    assert load_json(path) == {**data, "n": 1.5, "rows": [0, 1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json(path, {"a": object()})
    with pytest.raises(RuntimeError), atomic_write(path) as handle:
        handle.write(b"{half")
        raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.parametrize("per_process", [False, True])
def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path, per_process):
    target = tmp_path / "out"
    with replacing_directory(target, per_process=per_process) as staging:
        (staging / "f").write_text("1")
    with pytest.raises(RuntimeError), replacing_directory(target, per_process=per_process) as staging:
        (staging / "f").write_text("2")
        raise RuntimeError("interrupted")
    assert (target / "f").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["out"]
    with replacing_directory(target, per_process=per_process) as staging:
        (staging / "f").write_text("3")
    assert (target / "f").read_text() == "3" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_previous_folder_can_be_kept_and_a_crash_recovered(tmp_path):
    target, kept = tmp_path / "state", tmp_path / "state.previous"
    for round_number in (1, 2):
        replace_directory(target, lambda folder, n=round_number: (folder / "done").write_text(str(n)), kept)
    assert (target / "done").read_text() == "2" and (kept / "done").read_text() == "1"
    target.rename(tmp_path / "state.old")  # a crash between the two renames
    recover_directory(target, "done")
    assert (target / "done").read_text() == "2"
    (tmp_path / "state.old").mkdir()  # a crash after the swap, before the replaced folder was deleted
    (tmp_path / "state.old" / "done").write_text("stale")
    replace_directory(target, lambda folder: (folder / "done").write_text("3"), kept)
    assert (target / "done").read_text() == "3" and (kept / "done").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state", "state.previous"]


def test_a_killed_build_leaves_nothing_for_the_next_build_and_a_running_one_is_spared(tmp_path):
    import subprocess
    import sys

    from fedmrg.io import replacing_directory

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        target = tmp_path / "bench"
        dead = tmp_path / f".bench.building-{gone.pid}"
        alive = tmp_path / f".bench.building-{running.pid}"
        for folder in (dead, alive):
            folder.mkdir()
            (folder / "half-written.png").write_bytes(b"x")
        with replacing_directory(target, per_process=True) as staging:
            (staging / "benchmark.json").write_text("{}")
        assert (target / "benchmark.json").is_file()
        assert not dead.exists() and alive.exists()
    finally:
        running.kill()
        running.wait()


def test_a_build_killed_between_its_renames_gives_the_previous_version_back(tmp_path):
    import subprocess
    import sys

    from fedmrg.io import clear_dead_builds

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    previous = tmp_path / f".bench.old-{gone.pid}"
    previous.mkdir()
    (previous / "benchmark.json").write_text("{}")
    assert clear_dead_builds(tmp_path / "bench") == [previous]
    assert (tmp_path / "bench" / "benchmark.json").is_file() and not previous.exists()
