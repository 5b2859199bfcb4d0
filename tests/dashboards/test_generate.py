"""dashboards.generate: the committed JSON is exactly what the generator writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dashboards import generate

ROOT = Path(__file__).resolve().parents[2]


def test_committed_dashboards_match_the_generator_byte_for_byte(tmp_path: Path) -> None:
    written = generate.write_all(tmp_path)
    assert [p.name for p in written] == list(generate.DASHBOARDS)
    for path in written:
        committed = generate.HERE / path.name
        assert committed.is_file(), f"{committed} missing: run python -m dashboards.generate"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} drifted from dashboards/*.py: run python -m dashboards.generate"
        )


def test_no_stale_dashboard_is_committed() -> None:
    on_disk = {p.name for p in generate.HERE.glob("featureguard-*.json")}
    assert on_disk == set(generate.DASHBOARDS)


def test_output_is_sorted_indented_and_ends_with_one_newline() -> None:
    for build in generate.DASHBOARDS.values():
        text = generate.render(build())
        assert text.endswith("}\n") and not text.endswith("\n\n")
        assert text == generate.render(build())  # no uuids or timestamps leak in


def test_check_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate.write_all(tmp_path)
    assert generate.main(["--check", "--out", str(tmp_path)]) == 0
    victim = tmp_path / "featureguard-safety.json"
    victim.write_text(victim.read_text().replace("Shadow vs enforce", "Shadow v enforce"))
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1
    assert "featureguard-safety.json: out of date" in capsys.readouterr().err


@pytest.mark.parametrize("how", [["-m", "dashboards.generate"], ["dashboards/generate.py"]])
def test_runs_as_module_and_as_script(how: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, *how, "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(generate.DASHBOARDS)
