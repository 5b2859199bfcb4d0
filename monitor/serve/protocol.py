"""The OpenAI-compatible request bodies ``featureguard serve`` accepts, and its error bodies.

Requests are validated by pydantic; every problem becomes an OpenAI-style error body
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status (never a 500). Fields of
the OpenAI API that change the result but are not implemented (tools, logprobs, penalties,
``logit_bias``, ``suffix``) are refused when set to a non-default value rather than silently
ignored; fields that do not change the result (``user``, ``stream_options``, ``metadata`` ...)
are accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class APIError(Exception):
    """An error answered as an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


UNSUPPORTED_IF_SET: dict[str, Any] = {
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "logit_bias": None,
    "logprobs": (None, False),
    "top_logprobs": None,
    "response_format": None,
    "suffix": None,
    "best_of": (None, 1),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
}
"""Fields refused unless left at these defaults (a value or a tuple of accepted values)."""


class _Request(BaseModel):
    """Sampling fields shared by both endpoints (OpenAI names and ranges)."""

    model_config = ConfigDict(extra="allow", strict=False)

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(default=None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return v

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> _Request:
        extra = self.model_extra or {}
        for name, default in UNSUPPORTED_IF_SET.items():
            if name not in extra:
                continue
            allowed = default if isinstance(default, tuple) else (default,)
            if extra[name] not in allowed:
                raise APIError(400, f"{name!r} is not supported by featureguard serve", param=name)
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    prompt: str | list[str]
    echo: bool = False
    max_tokens: int | None = Field(default=16, ge=1)  # the completions API's own default

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        return v

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def limit(self) -> int | None:
        return self.max_tokens


@dataclass(frozen=True)
class Sampling:
    """What one generate batch must share: rows with equal keys may run together."""

    temperature: float
    top_p: float
    seed: int | None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def key(self, unique: object) -> tuple[Any, ...]:
        """Rows batch together only under the same sampling; a seeded request runs alone
        (its random stream must not depend on other requests)."""
        if self.greedy:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, unique if self.seed is not None else None)

    def generate_kwargs(self) -> dict[str, Any]:
        if self.greedy:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """One readable line (and the offending parameter) from pydantic/FastAPI errors."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if param:
        msg = f"{param}: {msg}"
    more = len(errors) - 1
    return (msg + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")), param
