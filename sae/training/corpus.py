"""The reproducible, offline training corpus for the bundled SAE.

Sources (all installable here, recorded with token counts in the manifest):

- ``austen``: Jane Austen's six novels (Debian ``r-cran-janeaustenr``, read through ``Rscript``).
- ``gcide``: entries of the Collaborative International Dictionary of English (``dict-gcide``).
- ``wordnet``: WordNet glosses and example sentences (``wordnet-base``).
- ``fortunes``: the ``fortune`` databases (``fortunes``, ``fortunes-min``).
- ``topics``/``chats``: paragraphs and chat exchanges the project wrote (``data/corpus_src``),
  covering scams, deception, weapons and violence at the level of description alongside
  ordinary topics, so that such features can form.
- ``*_chat``: part of the dictionary entries wrapped in the model's chat template (a user asks
  what a word means, the assistant answers with the entry), so chat-formatted text is in
  distribution: the monitor reads chat traffic.

Every document gets a split by hashing its text: 2% ``heldout`` (for ``sae eval``), else ``train``.
The build is deterministic for a given seed and set of installed packages.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae.errors import FeatureguardError

GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
WORDNET = Path("/usr/share/wordnet")
FORTUNES = Path("/usr/share/games/fortunes")
DEBIAN_PACKAGES = "dict-gcide wordnet-base fortunes fortunes-min r-cran-janeaustenr"
HELDOUT_FRACTION = 0.02


@dataclass(frozen=True)
class Document:
    source: str
    text: str | None = None
    messages: list[dict[str, str]] | None = None

    def key(self) -> str:
        body = self.text if self.text is not None else json.dumps(self.messages)
        return hashlib.sha256(body.encode()).hexdigest()

    def split(self) -> str:
        return "heldout" if int(self.key()[:8], 16) / 0xFFFFFFFF < HELDOUT_FRACTION else "train"


def _need(path: Path, package: str) -> None:
    if not path.exists():
        raise FeatureguardError(
            f"corpus source {path} is missing", hint=f"install it with: apt-get install {package}"
        )


def read_austen() -> Iterator[Document]:
    """Austen's novels as paragraphs of about 60–250 words."""
    script = (
        "library(janeaustenr); b <- austen_books(); "
        "for (i in seq_len(nrow(b))) cat(as.character(b$book[i]), '\\t', b$text[i], '\\n', sep='')"
    )
    try:
        out = subprocess.run(
            ["Rscript", "-e", script], capture_output=True, text=True, check=True
        ).stdout
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        raise FeatureguardError(
            "could not read janeaustenr through Rscript",
            hint="install it with: apt-get install r-cran-janeaustenr",
        ) from exc
    para: list[str] = []
    for line in out.splitlines():
        _, _, text = line.partition("\t")
        text = text.strip()
        if text:
            para.append(text)
        if para and (not text or sum(len(p.split()) for p in para) > 250):
            joined = " ".join(para)
            if len(joined.split()) >= 20:
                yield Document("austen", text=joined)
            para = []


def read_gcide() -> Iterator[Document]:
    """Dictionary entries, one document each, with pronunciations and markup removed."""
    _need(GCIDE, "dict-gcide")
    with gzip.open(GCIDE, "rt", encoding="utf-8", errors="replace") as fh:
        raw = fh.read()
    for block in re.split(r"\n\s*\n(?=\S)", raw):
        lines = block.strip().splitlines()
        if not lines or lines[0].startswith("00-database") or "\\" not in lines[0]:
            continue
        head = re.sub(r"\\[^\\]*\\", "", lines[0]).strip()
        body = " ".join(ln.strip() for ln in lines[1:] if not ln.strip().startswith("["))
        body = re.sub(r"\s+", " ", body).strip()
        if len(body.split()) >= 6:
            yield Document("gcide", text=f"{head}: {body}")


def read_wordnet() -> Iterator[Document]:
    """WordNet glosses (definitions and quoted examples), a few synsets per document."""
    _need(WORDNET / "data.noun", "wordnet-base")
    buf: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(WORDNET / f"data.{pos}", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or "|" not in line:
                    continue
                fields, gloss = line.split("|", 1)
                word = fields.split()[4].replace("_", " ")
                buf.append(f"{word}: {gloss.strip()}")
                if len(buf) == 4:
                    yield Document("wordnet", text="\n".join(buf))
                    buf = []


def read_fortunes() -> Iterator[Document]:
    """Every fortune cookie of the installed databases."""
    _need(FORTUNES, "fortunes")
    for path in sorted(FORTUNES.iterdir()):
        if path.suffix or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for cookie in text.split("\n%\n"):
            cookie = cookie.strip()
            if len(cookie.split()) >= 5:
                yield Document("fortunes", text=cookie)


def read_project(src_dir: Path) -> Iterator[Document]:
    """The project-written topic paragraphs and chat exchanges (``data/corpus_src``)."""
    for name in ("topics", "chats"):
        path = src_dir / f"{name}.jsonl"
        if not path.exists():
            continue
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise FeatureguardError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                if "messages" in obj:
                    yield Document(name, messages=obj["messages"])
                else:
                    yield Document(name, text=obj["text"])


_CHAT_ASKS = [
    'What does "{w}" mean?',
    "Define {w}.",
    "Can you explain the word {w}?",
    "what is {w}",
    "Give me the meaning of '{w}', please.",
    "Explain {w} in plain words.",
]


def as_chat(doc: Document, rng: random.Random) -> Document:
    """Wrap a ``word: definition`` entry as a user question and an assistant answer."""
    assert doc.text is not None
    word, _, definition = doc.text.partition(":")
    ask = rng.choice(_CHAT_ASKS).format(w=word.split(",")[0].strip().lower())
    messages = [
        {"role": "user", "content": ask},
        {"role": "assistant", "content": definition.strip()},
    ]
    return Document(f"{doc.source}_chat", messages=messages)


SourceReader = Callable[[], Iterator[Document]]


def build_corpus(
    out: Path,
    *,
    src_dir: Path,
    seed: int = 0,
    fractions: dict[str, float] | None = None,
    chat_fraction: float = 0.3,
    project_repeats: int = 2,
    sources: tuple[str, ...] = ("austen", "gcide", "wordnet", "fortunes", "project"),
) -> dict[str, int]:
    """Write ``out`` (JSONL of documents with ``source``, ``split``) and return docs per source.

    ``fractions`` subsamples the large Debian sources (defaults sized for ~1.1M tokens).
    Project-written documents are repeated ``project_repeats`` times (upweighting the small,
    safety-relevant part) — repeats share a split, so held-out text never leaks into training.
    """
    frac = {"austen": 0.3, "gcide": 0.05, "wordnet": 0.12, "fortunes": 0.35}
    frac.update(fractions or {})
    rng = random.Random(seed)
    readers: dict[str, SourceReader] = {
        "austen": read_austen,
        "gcide": read_gcide,
        "wordnet": read_wordnet,
        "fortunes": read_fortunes,
    }
    docs: list[Document] = []
    for name, reader in readers.items():
        if name not in sources:
            continue
        for doc in reader():
            if rng.random() < frac[name]:
                wrap = name in ("gcide", "wordnet") and rng.random() < chat_fraction
                docs.append(as_chat(doc, rng) if wrap else doc)
    if "project" in sources:
        docs.extend(list(read_project(src_dir)) * project_repeats)
    rng.shuffle(docs)
    counts: dict[str, int] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for doc in docs:
            row: dict[str, Any] = {"source": doc.source, "split": doc.split()}
            row.update({"text": doc.text} if doc.text is not None else {"messages": doc.messages})
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            counts[doc.source] = counts.get(doc.source, 0) + 1
    tmp.replace(out)
    return counts


def iter_corpus(path: Path, split: str | None = None) -> Iterator[dict]:
    """Documents of a built corpus, optionally only one split."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if split is None or row["split"] == split:
                yield row
