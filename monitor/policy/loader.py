"""Load a policy file: read → strict YAML → schema → meaning → compile, all or nothing.

Each stage reports every problem it finds; a later stage runs only when the earlier ones passed
(a schema check of a file whose YAML is broken would only add noise). The result is a complete
:class:`~monitor.policy.compiled.CompiledPolicy`, or one :class:`PolicyError` listing all
diagnostics. Warnings (FG4xx) never stop a load; :func:`check_policy` returns them too.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from monitor.policy import schema
from monitor.policy.compiled import CompiledPolicy
from monitor.policy.diagnostics import Diagnostic, PolicyError
from monitor.policy.saes import SAEResolver, default_resolver, static_resolver
from monitor.policy.yaml_strict import MAX_BYTES, Source, parse_bytes

_TYPE_WORDS = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text",
    "list_type": "a list",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
}
_RANGE = {
    "greater_than": "greater than {gt}",
    "greater_than_equal": "at least {ge}",
    "less_than": "less than {lt}",
    "less_than_equal": "at most {le}",
}


@lru_cache(maxsize=1)
def _field_names() -> tuple[str, ...]:
    from monitor.policy import catalog

    names: set[str] = set()
    for mod in (schema, catalog):
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, BaseModel):
                names.update(f.alias or n for n, f in obj.model_fields.items())
    return tuple(sorted(names))


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text '{value[:40]}'"
    return repr(value)


def _walk(loc: tuple[Any, ...], data: Any) -> tuple[tuple[Any, ...], bool]:
    """The data path a pydantic ``loc`` points at (union tags skipped); True if it is a key."""
    path: list[Any] = []
    cur = data
    for el in loc:
        if el == "[key]":
            return tuple(path), True
        in_dict = isinstance(cur, dict) and isinstance(el, str) and el in cur
        in_list = isinstance(cur, list) and isinstance(el, int) and 0 <= el < len(cur)
        if in_dict or in_list:
            path.append(el)
            cur = cur[el]
    return tuple(path), False


def _message(err: Mapping[str, Any], path: tuple[Any, ...]) -> tuple[str, str, bool]:
    """(code, plain-language message, position at the key?) for one pydantic error."""
    kind, loc, ctx, value = err["type"], err["loc"], err.get("ctx") or {}, err.get("input")
    last = str(path[-1]) if path else "the file"
    if kind == "extra_forbidden":
        near = difflib.get_close_matches(str(loc[-1]), _field_names(), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        return "FG201", f"unknown field '{loc[-1]}'{hint}", True
    if kind == "missing":
        return "FG202", f"'{loc[-1]}' is required here", False
    if loc == ("version",) or loc == ("catalog_version",):
        return (
            "FG210",
            f"version must be 1 (this featureguard reads schema v1), got {value!r}",
            False,
        )
    if kind in _TYPE_WORDS:
        return "FG203", f"'{last}' should be {_TYPE_WORDS[kind]}, not {_describe(value)}", False
    if kind in ("literal_error", "enum"):
        return "FG204", f"'{last}': {str(err['msg']).replace('Input should be', 'must be')}", False
    if kind in _RANGE:
        return "FG205", f"'{last}' must be {_RANGE[kind].format(**ctx)} (got {value!r})", False
    if kind in ("too_short", "too_long", "string_too_long", "string_too_short"):
        what = "item(s)" if isinstance(value, list | dict) else "character(s)"
        bound = ctx.get("min_length", ctx.get("max_length"))
        side = "at least" if "short" in kind else "at most"
        return "FG205", f"'{last}' needs {side} {bound} {what}", False
    if kind == "finite_number":
        return "FG205", f"'{last}' must be a finite number", False
    if kind == "condition_shape":
        return "FG206", str(err["msg"]), False
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        kinds = ", ".join(schema.ACTION_KINDS)
        got = f"'{ctx['tag']}' is not an action type" if "tag" in ctx else "missing 'type'"
        return "FG207", f"{got}: an action's type is one of {kinds}", False
    if kind == "string_pattern_mismatch":
        return "FG208", _pattern_message(str(ctx.get("pattern", "")), value), False
    if kind == "value_error":
        return "FG209", str(err["msg"]).removeprefix("Value error, "), False
    return "FG203", f"'{last}': {err['msg']}", False


def _pattern_message(pattern: str, value: Any) -> str:
    if "0-9a-f]{64}" in pattern:
        return f"'{value}' is not a sha256 (64 lowercase hex digits)"
    if "https?" in pattern:
        return f"'{value}' is not an http(s) URL"
    return (
        f"'{value}' is not a valid name: use letters, digits, '_', '.' or '-', "
        "starting with a letter or '_' (rule ids may start with a digit)"
    )


def validation_diagnostics(exc: ValidationError, src: Source) -> list[Diagnostic]:
    """Every pydantic error as a :class:`Diagnostic` at its YAML position."""
    out: dict[tuple[str, int, int], Diagnostic] = {}
    for err in exc.errors():
        path, is_key = _walk(tuple(err["loc"]), src.data)
        code, msg, at_key = _message(err, path)
        d = src.diag(code, msg, path, key=is_key or at_key)
        out.setdefault((d.code, d.line, d.col), d)
    return list(out.values())


def _resolver(resolver: SAEResolver | None, d_sae: Mapping[str, int] | None) -> SAEResolver:
    if resolver is not None:
        return resolver
    return static_resolver(d_sae) if d_sae else default_resolver


def check_policy_bytes(
    raw: bytes,
    file: str,
    base_dir: Path,
    *,
    resolver: SAEResolver | None = None,
    d_sae: Mapping[str, int] | None = None,
    allow_missing_sae: bool = False,
    max_bytes: int = MAX_BYTES,
) -> tuple[CompiledPolicy | None, list[Diagnostic]]:
    """Run every stage; returns the compiled policy (None on any error) and all diagnostics."""
    from monitor.policy.compiler import compile_policy
    from monitor.policy.semantics import resolve

    src, diags = parse_bytes(raw, file, max_bytes=max_bytes)
    if diags:
        return None, diags
    if not isinstance(src.data, dict):
        return None, [
            Diagnostic(
                "FG109",
                "the file must be a mapping (key: value lines) starting with 'version: 1'",
                file,
                *src.pos(()),
            )
        ]
    try:
        spec = schema.PolicySpec.model_validate(src.data)
    except ValidationError as exc:
        return None, validation_diagnostics(exc, src)
    resolved, diags = resolve(
        spec, src, base_dir, _resolver(resolver, d_sae), allow_missing_sae=allow_missing_sae
    )
    if any(d.severity == "error" for d in diags):
        return None, diags
    digest = hashlib.sha256(raw)
    for blob in resolved.import_bytes:
        digest.update(hashlib.sha256(blob).digest())
    compiled = compile_policy(resolved, sha256=digest.hexdigest())
    return dataclasses.replace(compiled, warnings=tuple(diags)), diags


def check_policy(path: str | Path, **kwargs: Any) -> tuple[CompiledPolicy | None, list[Diagnostic]]:
    """:func:`check_policy_bytes` on a file; an unreadable file is FG100."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        return None, [Diagnostic("FG100", f"cannot read the file: {exc.strerror}", str(p))]
    return check_policy_bytes(raw, str(p), p.resolve().parent, **kwargs)


def load_policy(path: str | Path, **kwargs: Any) -> CompiledPolicy:
    """Load, validate and compile the policy at ``path``; raises :class:`PolicyError`.

    Keyword arguments: ``resolver`` (an SAE resolver), ``d_sae`` (SAE name → width, for SAEs
    not on disk yet), ``allow_missing_sae`` (a missing SAE is a warning, not an error) and
    ``max_bytes``.
    """
    policy, diags = check_policy(path, **kwargs)
    if policy is None:
        raise PolicyError(diags)
    return policy


def load_policy_text(
    text: str, file: str = "<policy>", base_dir: str | Path = ".", **kwargs: Any
) -> CompiledPolicy:
    """Like :func:`load_policy` for text in memory (tests, tools); imports resolve from
    ``base_dir``."""
    policy, diags = check_policy_bytes(text.encode("utf-8"), file, Path(base_dir), **kwargs)
    if policy is None:
        raise PolicyError(diags)
    return policy
