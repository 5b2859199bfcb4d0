"""The malformed-policy corpus: each file is rejected with its expected code, line and column,
and ``policy check`` reports every one of them without a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.policy.diagnostics import CODES
from monitor.policy.loader import check_policy

CORPUS = Path(__file__).parent / "malformed"
FILES = sorted(CORPUS.glob("*.yaml"))
HEADER = re.compile(rb"^# expect: (FG\d{3}) (\d+):(\d+)")
MAX_BYTES = 4096  # y_too_large.yaml is over this cap, not over the 1 MiB default


def expected(path: Path) -> tuple[str, int, int]:
    m = HEADER.match(path.read_bytes())
    assert m, f"{path.name} has no '# expect: FGxxx LINE:COL' header"
    return m.group(1).decode(), int(m.group(2)), int(m.group(3))


def test_corpus_is_large_and_covers_every_error_code() -> None:
    assert len(FILES) >= 40
    seen = {expected(f)[0] for f in FILES}
    errors = {c for c in CODES if not c.startswith("FG4") and c != "FG100"}
    assert errors - seen <= {"FG321"}  # FG321 is raised inside catalogs: see test_loader


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_rejected_with_code_line_and_column(path: Path) -> None:
    code, line, col = expected(path)
    policy, diags = check_policy(path, d_sae={"main": 64}, max_bytes=MAX_BYTES)
    assert policy is None
    got = [(d.code, d.line, d.col) for d in diags if d.file == str(path)]
    assert (code, line, col) in got, [str(d) for d in diags]
    assert all(d.message and d.code in CODES for d in diags)


def test_policy_check_reports_all_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["policy", "check", "--d-sae", "main=64", "--max-bytes", str(MAX_BYTES), *map(str, FILES)]
    )
    out, err = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in out + err and "internal error" not in out
    for path in FILES:
        code, line, col = expected(path)
        assert f"{path}:{line}:{col}: {code} " in out
        assert f"{path}: FAILED" in out


def test_random_mutations_never_crash_the_loader(tmp_path: Path) -> None:
    """Byte-level mutations of the example policy: always a result or diagnostics, with a
    position inside the file, never an exception."""
    import random

    from monitor.policy.loader import check_policy_bytes

    text = (CORPUS.parents[3] / "rules" / "example.yaml").read_bytes()
    rng = random.Random(7)
    alphabet = b" :-[]{}\n#&*!'\"|>\tyesno0123.abc"
    for _ in range(150):
        data = bytearray(text)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            op = rng.randrange(3)
            if op == 0:
                del data[i : i + rng.randint(1, 12)]
            elif op == 1:
                data[i:i] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 3)))
            else:
                data[i] = rng.choice(alphabet)
        policy, diags = check_policy_bytes(bytes(data), "m.yaml", tmp_path, allow_missing_sae=True)
        n_lines = data.count(b"\n") + 1
        errors = [d for d in diags if d.severity == "error"]
        assert (policy is None) == bool(errors)
        assert all(0 <= d.line <= n_lines and d.code in CODES for d in diags)
