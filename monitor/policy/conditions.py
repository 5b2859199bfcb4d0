"""Schema building blocks (strict base model, name and number types) and the condition tree.

A condition is a mapping with exactly one distinguishing key: ``feature``, ``any``, ``all``,
``not``, ``count``, ``probe`` or ``macro``. The discriminator picks the model from that key, so
an error names the right fields instead of listing every alternative.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    model_validator,
)

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", max_length=128)]
RuleId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=128)]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Url = Annotated[str, StringConstraints(pattern=r"^https?://[^\s/$.?#][^\s]*$", max_length=2048)]
Threshold = Annotated[float, Field(allow_inf_nan=False)]
Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITY_LEVEL: dict[str, int] = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


class Strict(BaseModel):
    """Base: unknown fields are errors, and YAML values are never coerced ("5" is not 5)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


def _one_of(fields: dict[str, Any], what: str) -> None:
    """Raise unless exactly one of ``fields`` (display name → value) is given."""
    if sum(v is not None for v in fields.values()) != 1:
        names = " or ".join(f"'{f}'" for f in fields)
        raise ValueError(f"{what} needs exactly one of {names}")


# --- conditions -------------------------------------------------------------------------------


class FeatureCond(Strict):
    """True at a token where ``feature > above`` (absolute) or ``> above_scale × scale``."""

    feature: Name
    above: Threshold | None = None
    above_scale: Threshold | None = None

    @model_validator(mode="after")
    def _one_threshold(self) -> FeatureCond:
        _one_of({"above": self.above, "above_scale": self.above_scale}, "a feature condition")
        return self


class CountSpec(Strict):
    """At least ``at_least`` of the named features (or of a list) are over the threshold."""

    features: list[Name] | None = Field(default=None, min_length=1)
    list_: Name | None = Field(default=None, alias="list")
    above: Threshold | None = None
    above_scale: Threshold | None = None
    at_least: int = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> CountSpec:
        _one_of({"features": self.features, "list": self.list_}, "a count")
        _one_of({"above": self.above, "above_scale": self.above_scale}, "a count")
        return self


class CountCond(Strict):
    count: CountSpec


class AnyCond(Strict):
    any: list[Condition] = Field(min_length=1)


class AllCond(Strict):
    all: list[Condition] = Field(min_length=1)


class NotCond(Strict):
    not_: Condition = Field(alias="not")


class ProbeCond(Strict):
    """A linear probe from an imported catalog; ``above`` overrides the probe's threshold."""

    probe: Name
    above: Threshold | None = None


class MacroCond(Strict):
    macro: Name


COND_KEYS: dict[str, str] = {
    "feature": "feature-cond",
    "any": "any-cond",
    "all": "all-cond",
    "not": "not-cond",
    "count": "count-cond",
    "probe": "probe-cond",
    "macro": "macro-cond",
}
_MODEL_TAGS: dict[type, str] = {
    FeatureCond: "feature-cond",
    AnyCond: "any-cond",
    AllCond: "all-cond",
    NotCond: "not-cond",
    CountCond: "count-cond",
    ProbeCond: "probe-cond",
    MacroCond: "macro-cond",
}


def _cond_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        hits = [tag for key, tag in COND_KEYS.items() if key in value]
        return hits[0] if len(hits) == 1 else None
    return _MODEL_TAGS.get(type(value))


Condition = Annotated[
    Annotated[FeatureCond, Tag("feature-cond")]
    | Annotated[AnyCond, Tag("any-cond")]
    | Annotated[AllCond, Tag("all-cond")]
    | Annotated[NotCond, Tag("not-cond")]
    | Annotated[CountCond, Tag("count-cond")]
    | Annotated[ProbeCond, Tag("probe-cond")]
    | Annotated[MacroCond, Tag("macro-cond")],
    Discriminator(
        _cond_tag,
        custom_error_type="condition_shape",
        custom_error_message="a condition needs exactly one of: feature, any, all, not, "
        "count, probe, macro",
    ),
]
for _m in (AnyCond, AllCond, NotCond):
    _m.model_rebuild()
