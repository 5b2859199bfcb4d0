"""data/detection/make_split.py: the committed splits.json is what the split rule computes, and
an id filed under the wrong data version is refused with its file and line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

DETECTION = Path(__file__).resolve().parents[2] / "data" / "detection"


def run(script: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )


def test_committed_splits_match_the_split_rule() -> None:
    out = run(DETECTION / "make_split.py")
    assert out.returncode == 0, out.stderr
    assert "splits.json is up to date" in out.stdout


def test_an_id_of_another_data_version_is_refused_with_file_and_line(tmp_path: Path) -> None:
    shutil.copy(DETECTION / "make_split.py", tmp_path)
    shutil.copytree(DETECTION / "items", tmp_path / "items")
    shutil.copy(DETECTION / "splits.json", tmp_path)
    items = tmp_path / "items" / "scam_v7.jsonl"
    lines = items.read_text(encoding="utf-8").splitlines()
    lines[0] = lines[0].replace('"scam-6001"', '"scam-5999"')  # a version-6 id, version-7 file
    items.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = run(tmp_path / "make_split.py")
    assert out.returncode == 1
    assert "scam_v7.jsonl:1: ids numbered 5001-6000 belong in *_v6.jsonl files" in out.stderr
