"""A plain (non-editable) pip install of the wheel finds the bundled SAE and shipped policies."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import monitor, sae
    from monitor.resources import resolve_policy_path, rules_dirs
    from monitor.policy.loader import load_policy
    from sae.loading import bundled_names, load_sae

    repo = sys.argv[1]
    assert not monitor.__file__.startswith(repo), monitor.__file__  # the installed copy
    names = bundled_names()
    sae_obj = load_sae(names[0])
    out = {"sae": names, "d_sae": sae_obj.cfg.d_sae, "rules_dirs": [str(p) for p in rules_dirs()]}
    for policy in sys.argv[2:]:
        compiled = load_policy(resolve_policy_path(policy))
        out[policy] = [r.id for r in compiled.rules]
    print(json.dumps(out))
    """
)


@pytest.mark.integration
def test_wheel_install_finds_bundled_sae_and_policies(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("featureguard-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Dependencies come from this environment's site-packages (a path entry, so its .pth files,
    # including any editable install of featureguard, are not processed).
    target = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (target / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--ignore-installed",  # never uninstall this environment's (editable) copy
            "-q",
            "--prefix",
            str(venv),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    (tmp_path / "script.py").write_text(SCRIPT)
    policies = [p.stem for p in (REPO / "rules").glob("*.yaml") if not p.stem.endswith(".test")]
    assert "example" in policies
    res = subprocess.run(
        [str(py), str(tmp_path / "script.py"), str(REPO), *policies],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "smollm2-135m-res-l15" in out["sae"]
    assert out["d_sae"] > 576
    assert all(str(venv) in d for d in out["rules_dirs"])
    for policy in policies:
        assert out[policy], f"{policy} loaded with no rules"
