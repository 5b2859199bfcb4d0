"""Alert payload templates: ``$variable`` text (Python's ``string.Template``), never code.

A payload is a text or a mapping of texts; ``$rule``, ``${severity}`` and the names in
:data:`PAYLOAD_VARS` are filled in when an alert is sent. Unknown names are caught at load time
(FG316), so an alert never fails for a typo at 3 a.m.
"""

from __future__ import annotations

from collections.abc import Mapping
from string import Template
from typing import Any

PAYLOAD_VARS: dict[str, str] = {
    "rule": "the rule id",
    "description": "the rule's description",
    "severity": "info, low, medium, high or critical",
    "mode": "enforce or shadow",
    "summary": "the rule's annotations.summary",
    "runbook_url": "the rule's annotations.runbook_url",
    "policy": "the policy name",
    "revision": "the policy revision",
    "policy_hash": "sha256 of the policy file",
    "token_index": "position of the first matching token",
    "phase": "prompt or completion",
    "row": "row in the batch",
    "request_id": "request context: request id",
    "tenant": "request context: tenant",
    "user": "request context: user",
    "route": "request context: route",
    "features": "the rule's features with their values at the match",
    "actions": "the rule's actions",
}


def template_names(template: str | Mapping[str, str] | None) -> list[str]:
    """Every ``$name`` used in ``template`` (a text or a mapping of texts), in order."""
    if template is None:
        return []
    texts = [template] if isinstance(template, str) else list(template.values())
    names: list[str] = []
    for text in texts:
        for m in Template.pattern.finditer(text):
            name = m.group("named") or m.group("braced")
            if name:
                names.append(name)
    return names


def unknown_names(template: str | Mapping[str, str] | None) -> list[str]:
    return [n for n in template_names(template) if n not in PAYLOAD_VARS]


def render_payload(
    template: str | Mapping[str, str] | None, values: Mapping[str, Any]
) -> str | dict[str, str]:
    """Fill ``template``; missing values become empty text. ``None`` gives a default summary."""
    vals = {k: "" if v is None else str(v) for k, v in values.items()}
    if template is None:
        template = "[$severity] $rule: $summary"
    if isinstance(template, str):
        return Template(template).safe_substitute({**dict.fromkeys(PAYLOAD_VARS, ""), **vals})
    return {k: str(render_payload(v, values)) for k, v in template.items()}
