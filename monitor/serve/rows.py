"""One choice of one request while it is generated: its tokens, its text, and when it ends.

A :class:`RowStream` receives the row's sampled tokens one at a time and decides what text the
client may see:

- **hold back**: the newest ``hold_back`` tokens are not sent yet, so that a stop or replace
  rule matching on them (the monitor checks a token on the forward *after* it was sampled) can
  still suppress them. Tokens already sent cannot be taken back.
- **stop sequences**: the text ends before the first stop sequence (which is not sent); text
  that could be the start of a stop sequence waits until it is decided.
- **content filter**: when the monitor halts the row at completion token ``cut``, nothing from
  token ``cut`` on is sent, and the row finishes with ``finish_reason: content_filter``.

Text is decoded from the whole token list each time (a token may end inside a UTF-8 character;
a trailing U+FFFD waits for the next token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Decode = Callable[[list[int]], str]


@dataclass
class RowStream:
    """The text state of one choice. ``decode`` turns token ids into text (special tokens
    skipped); ``max_tokens`` ends the row with ``length``.

    Protocol (driven by the engine, once per generate step): :meth:`halt` for a row the monitor
    ended, :meth:`checked` once every pushed token has been through the monitor, then
    :meth:`push` with the newly sampled token. Each returns the text the client may see now.
    """

    decode: Decode
    max_tokens: int
    stops: tuple[str, ...] = ()
    hold_back: int = 0
    tokens: list[int] = field(default_factory=list)
    sent: str = ""  # text already handed to the client
    pending: str | None = None  # natural end ("stop" | "length") whose last token is unchecked
    finish_reason: str | None = None  # "stop" | "length" | "content_filter" once final
    cut: int | None = None  # completion tokens kept when the monitor halted the row
    _stop_at: int | None = None  # character offset of the first stop sequence

    @property
    def generating(self) -> bool:
        """Still sampling: no natural end and no halt yet."""
        return self.pending is None and self.finish_reason is None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def completion_tokens(self) -> int:
        """Tokens of the completion as answered (up to the cut for a filtered row)."""
        return len(self.tokens) if self.cut is None else min(self.cut, len(self.tokens))

    def push(self, token: int, *, eos: bool) -> str:
        """Add one sampled token (``eos``: the row's end-of-sequence, not part of the text)."""
        if not self.generating:
            return ""
        if eos:
            self.pending = "stop"
            return ""
        self.tokens.append(token)
        if self.stops:
            text = self.decode(self.tokens)
            hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
            if hits:
                self._stop_at = min(hits)
                self.pending = "stop"
                return ""
        if len(self.tokens) >= self.max_tokens:
            self.pending = "length"
            return ""
        return self._release(max(0, len(self.tokens) - self.hold_back), final=False)

    def checked(self) -> str:
        """Every token pushed so far has been checked: a pending natural end is now final."""
        if self.pending is None or self.finished:
            return ""
        return self._finish(self.pending)

    def halt(self, cut: int) -> str:
        """The monitor ended the row: keep only the first ``cut`` completion tokens."""
        if self.finished:
            return ""
        self.cut = max(0, min(cut, len(self.tokens)))
        return self._finish("content_filter")

    def visible_text(self) -> str:
        """The whole answer text as it stands (for non-streaming responses)."""
        return self._text(self.completion_tokens)

    def _finish(self, reason: str) -> str:
        self.finish_reason = reason
        return self._release(self.completion_tokens, final=True)

    def _text(self, n: int) -> str:
        text = self.decode(self.tokens[:n])
        return text[: self._stop_at] if self._stop_at is not None else text

    def _release(self, n: int, *, final: bool) -> str:
        text = self._text(n)
        if not final:
            if text.endswith("\ufffd"):
                return ""  # a multi-byte character is not complete yet
            text = text[: len(text) - _partial_stop(text, self.stops)]
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""  # nothing new (or a re-tokenised prefix: never re-send)
        new, self.sent = text[len(self.sent) :], text
        return new


def _partial_stop(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop sequence."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
