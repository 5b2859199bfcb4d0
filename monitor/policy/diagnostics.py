"""Policy diagnostics: one stable code, a file position and a plain-language message per problem.

Loading collects every problem it can find in a stage (YAML, schema, meaning) before it gives
up, and raises one :class:`PolicyError` that carries them all. Codes are stable so that CI jobs
and docs can refer to them: ``FG1xx`` YAML and file problems, ``FG2xx`` schema problems (wrong
field, wrong type, value out of range), ``FG3xx`` meaning problems (unknown names, cycles, an
index past the SAE's width). ``FG4xx`` are warnings; they never block loading.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from sae.errors import FeatureguardError

CODES: dict[str, str] = {
    # FG1xx: the file and its YAML
    "FG100": "file cannot be read",
    "FG101": "YAML syntax error",
    "FG102": "YAML anchors and aliases are not allowed",
    "FG103": "more than one YAML document",
    "FG104": "duplicate key",
    "FG105": "key is not a plain string",
    "FG106": "YAML tags are not allowed",
    "FG107": "ambiguous yes/no/on/off value",
    "FG108": "file too large",
    "FG109": "file is empty or not a mapping",
    "FG110": "file is not valid UTF-8 text",
    "FG111": "nesting too deep",
    # FG2xx: the schema
    "FG201": "unknown field",
    "FG202": "missing required field",
    "FG203": "wrong type",
    "FG204": "value not allowed",
    "FG205": "value out of range",
    "FG206": "condition has the wrong shape",
    "FG207": "unknown or missing action type",
    "FG208": "badly formed name or text",
    "FG209": "invalid combination of fields",
    "FG210": "unsupported schema version",
    # FG3xx: meaning
    "FG301": "unknown feature",
    "FG302": "feature index past the SAE's width",
    "FG303": "threshold out of range",
    "FG304": "unknown list",
    "FG305": "unknown macro",
    "FG306": "macros refer to each other in a cycle",
    "FG307": "duplicate rule id",
    "FG308": "alert to an undefined channel",
    "FG309": "unknown SAE name",
    "FG310": "SAE not found",
    "FG311": "catalog belongs to a different SAE",
    "FG312": "catalog cannot be loaded",
    "FG313": "unknown probe",
    "FG314": "feature has no recorded scale",
    "FG315": "invalid redact pattern",
    "FG316": "unknown payload variable",
    "FG317": "name defined twice",
    "FG318": "count needs more features than it has",
    "FG319": "window needs more tokens than it looks at",
    "FG320": "SAE does not match its declaration",
    "FG321": "probe is inconsistent",
    # FG4xx: warnings
    "FG401": "SAE not checked",
    "FG402": "rule is disabled",
    "FG403": "policy has no enabled rules",
}

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Diagnostic:
    """One problem in a policy (or catalog) file. ``line``/``col`` are 1-based; 0 = unknown."""

    code: str
    message: str
    file: str
    line: int = 0
    col: int = 0
    severity: Severity = "error"

    def __str__(self) -> str:
        where = self.file if self.line == 0 else f"{self.file}:{self.line}:{self.col}"
        kind = "" if self.severity == "error" else "warning: "
        return f"{where}: {self.code} {kind}{self.message}"


class PolicyError(FeatureguardError):
    """A policy that cannot be loaded. ``diagnostics`` lists every problem found, in file order."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.file, d.line, d.col, d.code))
        errors = [d for d in self.diagnostics if d.severity == "error"]
        first = str(errors[0]) if errors else "unknown problem"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"invalid policy: {first}{more}")

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def report(self) -> str:
        """Every diagnostic, one ``file:line:col: FGxxx message`` line each."""
        return "\n".join(str(d) for d in self.diagnostics)
