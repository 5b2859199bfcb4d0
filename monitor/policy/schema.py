"""Policy schema v1: the pydantic models a policy file is validated against.

Every model forbids unknown fields, so a typo is an error rather than a silently ignored rule.
Conditions form a tree whose node kind is picked by its one distinguishing key (``feature``,
``any``, ``all``, ``not``, ``count``, ``probe``, ``macro``); actions are picked by their ``type``.
Checks that need more than one field at a time (names that must exist, cycles, the SAE's width)
live in :mod:`monitor.policy.semantics`; this module only fixes the shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from monitor.policy.conditions import (
    COND_KEYS,
    SEVERITY_LEVEL,
    AllCond,
    AnyCond,
    Condition,
    CountCond,
    CountSpec,
    FeatureCond,
    LabelKey,
    MacroCond,
    Name,
    NotCond,
    ProbeCond,
    RuleId,
    Severity,
    Sha256,
    Strict,
    Threshold,
    Url,
    _one_of,
)

__all__ = [
    "ACTION_KINDS",
    "COND_KEYS",
    "SEVERITY_LEVEL",
    "Action",
    "AllCond",
    "AnyCond",
    "Condition",
    "CountCond",
    "CountSpec",
    "FeatureCond",
    "LabelKey",
    "MacroCond",
    "Name",
    "NotCond",
    "PolicySpec",
    "ProbeCond",
    "Rule",
    "RuleId",
    "Severity",
    "Sha256",
    "Strict",
    "Threshold",
    "Url",
    "json_schema",
]

# --- actions ----------------------------------------------------------------------------------


class LogAction(Strict):
    type: Literal["log"]


class AlertAction(Strict):
    """Send to a channel; ``payload`` is a ``$variable`` template (text or a mapping of texts)."""

    type: Literal["alert"]
    channel: Name
    payload: str | dict[str, str] | None = None


class AblateAction(Strict):
    """Set the features to 0 while the rule is active."""

    type: Literal["ablate"]
    features: list[Name] | None = Field(default=None, min_length=1)
    list_: Name | None = Field(default=None, alias="list")

    @model_validator(mode="after")
    def _check(self) -> AblateAction:
        _one_of({"features": self.features, "list": self.list_}, "ablate")
        return self


class ClampAction(Strict):
    """Cap the features at ``value`` (absolute) or ``scale`` × each feature's scale.

    A clamp sets ``f → min(f, cap)`` while the rule is active. A negative cap (``value: -5``, or
    ``scale: -0.5`` = −0.5 × the feature's scale) is "clamping negatively": SAE activations are
    ≥ 0, so every active token gets the feature at exactly ``cap``, including tokens where it
    was 0, which pushes the activation along minus the feature's decoder direction.
    """

    type: Literal["clamp"]
    features: list[Name] | None = Field(default=None, min_length=1)
    list_: Name | None = Field(default=None, alias="list")
    value: Threshold | None = None
    scale: Threshold | None = None

    @model_validator(mode="after")
    def _check(self) -> ClampAction:
        _one_of({"features": self.features, "list": self.list_}, "clamp")
        _one_of({"value": self.value, "scale": self.scale}, "clamp")
        return self


class StopAction(Strict):
    type: Literal["stop"]


class ReplaceAction(Strict):
    """End the output and substitute ``message`` for it."""

    type: Literal["replace"]
    message: str = Field(min_length=1, max_length=4000)


Action = Annotated[
    LogAction | AlertAction | AblateAction | ClampAction | StopAction | ReplaceAction,
    Field(discriminator="type"),
]
ACTION_KINDS = ("log", "alert", "ablate", "clamp", "stop", "replace")


# --- rules ------------------------------------------------------------------------------------


class Window(Strict):
    """The condition must hold on at least ``at_least`` of the last ``of_last`` tokens."""

    at_least: int = Field(ge=1)
    of_last: int = Field(ge=1, le=1024)  # state is B × R × longest window bytes


class ExceptionSpec(Strict):
    """Do not fire when ``when`` holds and/or the request context matches ``context``.

    ``context`` maps a label (``tenant``, ``user``, ``route`` ...) to one value or a list of
    values; shell-style wildcards (``*``) are allowed. All given labels must match.
    """

    name: str | None = None
    description: str = ""
    when: Condition | None = None
    context: dict[LabelKey, str | list[str]] | None = None

    @model_validator(mode="after")
    def _check(self) -> ExceptionSpec:
        if self.when is None and not self.context:
            raise ValueError("an exception needs 'when' (a condition) or 'context' (labels)")
        return self


class Annotations(Strict):
    summary: str | None = None
    description: str | None = None
    runbook_url: Url | None = None


class Rule(Strict):
    id: RuleId
    description: str = ""
    severity: Severity
    mode: Literal["enforce", "shadow"] = "enforce"
    enabled: bool = True
    scope: Literal["prompt", "completion", "both"] = "both"
    condition: Condition
    window: Window | None = None
    for_: int = Field(default=1, alias="for", ge=1, le=4096)
    cooldown: int = Field(default=0, ge=0, le=1_000_000)
    hold: int = Field(default=0, ge=0, le=1_000_000)
    exceptions: list[ExceptionSpec] = Field(default_factory=list)
    labels: dict[LabelKey, str] = Field(default_factory=dict)
    annotations: Annotations = Annotations()
    actions: list[Action] = Field(min_length=1)


# --- the file ---------------------------------------------------------------------------------


class PolicyMeta(Strict):
    name: Name
    owner: str | None = None
    description: str = ""
    revision: str | None = None


class SAESpec(Strict):
    """An SAE by ``bundled`` name or by ``path`` (relative to the policy file)."""

    bundled: Name | None = None
    path: str | None = None
    hook: str | None = None
    d_sae: int | None = Field(default=None, ge=1)
    sha256: Sha256 | None = None

    @model_validator(mode="after")
    def _check(self) -> SAESpec:
        if (self.bundled is None) == (self.path is None):
            raise ValueError("an SAE needs exactly one of 'bundled' or 'path'")
        return self


class ImportSpec(Strict):
    """Features and probes from a catalog file, bound to one of the policy's SAEs."""

    catalog: str
    sae: Name
    prefix: str = ""


class FeatureSpec(Strict):
    sae: Name | None = None
    index: int = Field(ge=0)
    description: str = ""
    scale: Threshold | None = Field(default=None, gt=0)
    export: bool = False


class AuditSpec(Strict):
    include_text: bool = False
    redact: list[str] = Field(default_factory=list)
    sink: str = Field(default="stdout", min_length=1)


class ChannelSpec(Strict):
    type: Literal["alertmanager", "webhook"]
    url: Url
    timeout_s: float = Field(default=2.0, gt=0, le=60)
    retries: int = Field(default=2, ge=0, le=10)


class PolicySpec(Strict):
    version: Literal[1]
    policy: PolicyMeta
    saes: dict[Name, SAESpec] = Field(min_length=1)
    imports: list[ImportSpec] = Field(default_factory=list)
    features: dict[Name, FeatureSpec] = Field(default_factory=dict)
    lists: dict[Name, list[Name]] = Field(default_factory=dict)
    macros: dict[Name, Condition] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    on_error: Literal["fail_open", "fail_closed"] | None = None
    audit: AuditSpec = AuditSpec()
    channels: dict[Name, ChannelSpec] = Field(default_factory=dict)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, for editors (YAML language server)."""
    schema = PolicySpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "featureguard policy v1"
    return schema
