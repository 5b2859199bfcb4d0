"""The generation worker behind ``featureguard serve``: a queue, micro-batches, per-row streams.

Requests are **queued** (FIFO) and run by one worker thread that owns the model; a step of the
worker is one ``guarded.generate`` call. Queued requests whose sampling settings match (all
greedy requests; sampled requests with the same temperature and top-p and no seed) are
**batched** into that call, up to ``max_batch_rows`` rows (each choice is a row; rows are
left-padded). A request with a ``seed`` runs alone so that its random stream does not depend
on other requests. Per-row ``max_tokens`` and stop sequences end rows individually (a
``StoppingCriteria``), so rows of one batch may end at different steps. transformers'
continuous batching is not used: it packs sequences into one row, which breaks the per-row
hooks (CONTRACTS "Streaming and serving").

Events for a request go to its ``emit`` callable from the worker thread (the app turns them
into an asyncio queue): :class:`Delta` text, one :class:`Finish` per choice, then
:class:`Done`, or :class:`Failed`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from monitor.metrics import Metrics
from monitor.runtime.guarded import GuardedModel
from monitor.runtime.report import RowReport
from monitor.serve.protocol import APIError, Sampling
from monitor.serve.rows import RowStream


@dataclass(frozen=True)
class Delta:
    choice: int
    text: str


@dataclass(frozen=True)
class Finish:
    """One choice ended. ``action``: ``stop`` | ``replace`` | ``error`` when the monitor ended
    it (``finish_reason`` is then ``content_filter``); ``rules``: enforce rules that fired."""

    choice: int
    finish_reason: str
    text: str  # the whole answer text (the replacement message for a replaced row)
    completion_tokens: int
    rules: tuple[str, ...]
    action: str | None
    replacement: str | None


@dataclass(frozen=True)
class Done:
    prompt_tokens: int
    completion_tokens: int
    policy: str
    revision: str | None
    sha256: str


@dataclass(frozen=True)
class Failed:
    error: APIError


Event = Delta | Finish | Done | Failed


@dataclass
class Job:
    """One HTTP request: ``rows`` are the prompt ids of each choice (in choice order)."""

    rows: list[list[int]]
    sampling: Sampling
    max_tokens: int
    stops: tuple[str, ...]
    context: Mapping[str, Any]
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[Any, ...]:
        return self.sampling.key(id(self))


@dataclass
class _Row:
    job: Job
    choice: int
    prompt_len: int
    stream: RowStream


class PassThrough:
    """An unmonitored stand-in for a :class:`GuardedModel` (``bench serve``'s baseline): the
    same ``generate`` call, no hooks, no report."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.last_report = None

    def generate(self, *args: Any, monitor_context: Any = None, **kwargs: Any) -> Any:
        return self.model.generate(*args, **kwargs)


class Engine:
    """Owns ``guarded`` (and its tokenizer) and runs queued jobs in a worker thread."""

    def __init__(
        self,
        guarded: GuardedModel | PassThrough,
        tokenizer: Any,
        *,
        max_batch_rows: int = 8,
        max_queue: int = 256,
        hold_back: int = 1,
        metrics: Metrics | None = None,
    ) -> None:
        if max_batch_rows < 1 or max_queue < 1 or hold_back < 0:
            raise ValueError("max_batch_rows and max_queue must be >= 1, hold_back >= 0")
        self.guarded, self.tokenizer = guarded, tokenizer
        self.max_batch_rows, self.max_queue, self.hold_back = max_batch_rows, max_queue, hold_back
        self.metrics = metrics
        self.tokenizer_lock = threading.Lock()  # fast tokenizers are not safe across threads
        gc: Any = getattr(guarded.model, "generation_config", None)
        eos = gc.eos_token_id if gc is not None else None
        ids = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        self.eos_ids = sorted(int(i) for i in ids)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.eos_ids or [0])[0])
        self._queue: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.batches = 0  # generate calls made (for tests and logs)
        self._thread = threading.Thread(target=self._loop, name="featureguard-serve", daemon=True)

    # ---- lifetime ---------------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, fail the queued ones, finish the running batch, stop the worker."""
        with self._cv:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cv.notify_all()
        for job in pending:
            job.emit(Failed(APIError(503, "the server is shutting down", type="server_error")))
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._set_depth()

    # ---- text helpers (thread-safe) ---------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        with self.tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        with self.tokenizer_lock:
            if not getattr(self.tokenizer, "chat_template", None):
                raise APIError(
                    400, "this model has no chat template; use /v1/completions", param="messages"
                )
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        return [int(i) for i in ids]

    def decode(self, ids: list[int]) -> str:
        with self.tokenizer_lock:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    # ---- queue ------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`APIError` 503 when closed, 429 when the queue is full,
        400 when it has more rows than one batch holds."""
        if len(job.rows) > self.max_batch_rows:
            raise APIError(
                400,
                f"this request needs {len(job.rows)} rows (prompts x n); the server runs at "
                f"most {self.max_batch_rows} per batch",
                param="n",
            )
        with self._cv:
            if self._closed:
                raise APIError(503, "the server is shutting down", type="server_error")
            if len(self._queue) >= self.max_queue:
                raise APIError(
                    429, "too many queued requests; retry later", type="rate_limit_error"
                )
            self._queue.append(job)
            self._cv.notify()
        self._set_depth()

    def queued(self) -> int:
        with self._cv:
            return len(self._queue)

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.queued())

    def _take(self) -> list[Job] | None:
        """Block for the next job; add queued jobs with the same sampling key, in order."""
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            first = self._queue.popleft()
            batch, rows = [first], len(first.rows)
            for job in list(self._queue):
                if job.key == first.key and rows + len(job.rows) <= self.max_batch_rows:
                    self._queue.remove(job)
                    batch.append(job)
                    rows += len(job.rows)
        self._set_depth()
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            batch = [j for j in batch if not j.cancelled.is_set()]
            if not batch:
                continue
            try:
                self._run(batch)
            except APIError as exc:
                for job in batch:
                    job.emit(Failed(exc))
            except Exception as exc:  # never let one bad batch kill the worker
                err = APIError(
                    500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error"
                )
                for job in batch:
                    job.emit(Failed(err))

    # ---- one batch --------------------------------------------------------------------------
    def _run(self, batch: list[Job]) -> None:
        rows = [
            _Row(
                job,
                choice,
                len(prompt),
                RowStream(self.decode, job.max_tokens, job.stops, self.hold_back),
            )
            for job in batch
            for choice, prompt in enumerate(job.rows)
        ]
        prompts = [p for job in batch for p in job.rows]
        width = max(len(p) for p in prompts)
        ids = torch.tensor(
            [[self.pad_id] * (width - len(p)) + p for p in prompts], dtype=torch.long
        )  # (B, L) left-padded
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long
        )  # (B, L)
        device = next(self.guarded.model.parameters()).device
        sampling = batch[0].sampling
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        watcher = _Watcher(self, rows)
        with torch.inference_mode():
            self.guarded.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max(j.max_tokens for j in batch),
                pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids or None,
                streamer=watcher,
                stopping_criteria=StoppingCriteriaList([_RowsDone(rows)]),
                monitor_context=[{**r.job.context} for r in rows],
                **sampling.generate_kwargs(),
            )
        self.batches += 1
        watcher.settle(final=True)
        report: Any = self.guarded.last_report
        for job in batch:
            mine = [(i, r) for i, r in enumerate(rows) if r.job is job]
            for i, r in mine:
                row_report = report.rows[i] if report is not None else None
                job.emit(_finish(r, row_report))
            job.emit(
                Done(
                    prompt_tokens=sum(r.prompt_len for _, r in mine),
                    completion_tokens=sum(r.stream.completion_tokens for _, r in mine),
                    policy=report.policy if report else "",
                    revision=report.revision if report else None,
                    sha256=report.sha256 if report else "",
                )
            )


def _finish(r: _Row, rep: RowReport | None) -> Finish:
    s = r.stream
    rules = tuple(dict.fromkeys(f.rule for f in rep.fired if f.mode == "enforce")) if rep else ()
    action = None
    if s.finish_reason == "content_filter" and rep is not None:
        action = rep.halt_reason or "stop"
    replacement = rep.replacement if rep is not None and rep.replaced else None
    return Finish(
        choice=r.choice,
        finish_reason=s.finish_reason or "length",
        text=replacement if replacement is not None else s.visible_text(),
        completion_tokens=s.completion_tokens,
        rules=rules,
        action=action,
        replacement=replacement,
    )


class _RowsDone(StoppingCriteria):
    """Ends rows that reached their own ``max_tokens`` or stop sequence, or whose client left."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = [not r.stream.generating or r.job.cancelled.is_set() for r in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # (B,)


class _Watcher(BaseStreamer):
    """The ``streamer`` of a batch: routes each sampled token to its row and releases text.

    ``put`` is called by generate right after sampling a step's tokens, after the forward that
    checked the previous step's tokens, so at each ``put`` every earlier token is checked.
    """

    def __init__(self, engine: Engine, rows: list[_Row]) -> None:
        self.engine, self.rows = engine, rows
        self.eos = set(engine.eos_ids)
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first puts the prompt (B, L)
            self._prompt_seen = True
            return
        self.settle(final=False)
        tokens = value.reshape(len(self.rows), -1)[:, -1].tolist()  # (B,)
        for r, tok in zip(self.rows, tokens, strict=True):
            self._send(r, r.stream.push(int(tok), eos=int(tok) in self.eos))

    def end(self) -> None:
        """Called by generate before the monitor's final step; :meth:`settle` follows."""

    def settle(self, *, final: bool) -> None:
        """Apply the monitor's halts, then end rows whose last token has now been checked."""
        report = self.engine.guarded.last_report
        for i, r in enumerate(self.rows):
            rep = report.rows[i] if report is not None else None
            if rep is not None and (rep.stopped or rep.replaced) and not r.stream.finished:
                halt = rep.halt_token if rep.halt_token is not None else r.prompt_len
                self._send(r, r.stream.halt(halt - r.prompt_len))
            self._send(r, r.stream.checked())
            if final and not r.stream.finished:
                r.stream.pending = r.stream.pending or "length"
                self._send(r, r.stream.checked())

    def _send(self, r: _Row, text: str) -> None:
        if text and not r.job.cancelled.is_set():
            r.job.emit(Delta(r.choice, text))
