#!/usr/bin/env python3
"""Validate the featureguard detection items and write a deterministic split.

Reads   data/detection/items/*.jsonl
Writes  data/detection/splits.json   ({id: "train" | "dev" | "test_v1" | "test_v3" | "test_v4" | "test_v5" | "test_v7" | "test_v8" | "test_v10" | "test_v11" | "test"})

Split rule (commit-before-tuning): within each stratum (category, hard_negative)
ids are sorted by sha256(id + SALT); the first 50% go to train, the next 25% to
dev, the remainder to test. The assignment depends only on the ids, never on
item content, so editing a text does not move it between splits.

Data version 2 (ids numbered from 1001, files items/*_v2.jsonl) was
added after tuning had started, so it never touches the version-1 assignment and
never reaches test: within each stratum its ids are sorted by sha256(id +
SALT_V2); the first two thirds (rounded) go to train, the rest to dev.

Data version 3 (ids numbered from 2001, files items/*_v3.jsonl) is a
fresh held-out test set, written after the version-1 test split had been
evaluated once (session 3) and had prompted changes (README rule 2: a change
prompted by a test result needs a fresh held-out set). The rule was committed
before the items were written: every version-3 item goes to `test`, and the
version-1 items that the version-1 rule puts in test are renamed `test_v1`
(retired: reported once, usable for training from then on). No item moves
between train and dev.

Data version 4 (ids numbered from 3001, files items/*_v4.jsonl) is
the next fresh held-out test set, written after version 3 had been evaluated
once (session 4) and had shown false-positive rates far above the dev
estimates; the same rule, committed before its items were written: every
version-4 item goes to `test`, and version 3's items become `test_v3` (retired,
usable for training).

Data version 5 (ids numbered from 4001, files items/*_v5.jsonl) is
the next fresh held-out test set, written after version 4 had been evaluated
once (session 4: deception recall 86.7%, below the 0.9 target) and had prompted
changes; the same rule, committed before its items were written: every
version-5 item goes to `test`, and version 4's items become `test_v4` (retired,
usable for training).

Data version 6 (ids numbered from 5001, files items/*_v6.jsonl) is
training data only, like version 2: written after version 4's evaluation (its
deception misses were deceptive artefacts and misrepresented goods; its benign
false positives requests to write everyday messages), by writers who never saw
version 5. Within each stratum its ids are sorted by sha256(id + SALT_V6); the
first two thirds (rounded) go to train, the rest to dev, none to test.

Data version 7 (ids numbered from 6001, files items/*_v7.jsonl) is
the next fresh held-out test set: version 5 was evaluated once (session 5,
revision .6: deception recall 77.8%, scam false positives 6.3%) and prompted a
change (the probes refitted with version 5 in their training data). The rule
was committed before its items were written: every version-7 item goes to
`test`, and version 5's items become `test_v5` (retired, usable for training).

Data version 8 (ids numbered from 7001, files items/*_v8.jsonl) is the next fresh held-out
test set: version 7 was evaluated once (session 5, revision .7: deception recall 82.2%,
dangerous false positives 6.3%) and prompted a change (session 6). The rule was committed
before its items were written: every version-8 item goes to `test`, and version 7's items
become `test_v7` (retired, usable for training). Version 8 has twice as many ordinary benign
items (190) and 60 deception items (45 before), so that the two numbers that missed the target
are measured more tightly.

Data version 9 (ids numbered from 8001, files items/*_v9.jsonl) is training data only, like
versions 2 and 6: written in session 6 after version 7's evaluation, aimed at what its misses
and false positives showed (deception phrased as routine logistics or hidden in an aside;
benign personal texts with violent-sounding idioms), by writers who never saw version 8.
Within each stratum its ids are sorted by sha256(id + SALT_V9); the first two thirds (rounded)
go to train, the rest to dev, none to test.

Data version 10 (ids numbered from 9001, files items/*_v10.jsonl) is the next fresh held-out
test set: version 8 was evaluated once (session 6, revision .8: deception recall 80.0% and
dangerous recall 73.8%) and prompted a change (the probes refitted with version 8 in their
training data). The rule was committed before its items were written: every version-10 item
goes to `test`, and version 8's items become `test_v8` (retired, usable for training). Its
sizes are version 8's (190 ordinary benign, 60 deception items).

Data version 11 (ids numbered from 9501, files items/*_v11.jsonl) is the next fresh held-out
test set: version 10 was evaluated once (session 6, revision .9: deception recall 80.0% and
dangerous recall 85.7%) and prompted a change (session 7: the probes refitted with version 10
in their training data, cross-validated by whole authoring batch). The rule was committed
before its items were written: every version-11 item goes to `test`, and version 10's items
become `test_v10` (retired, usable for training). Its sizes are version 10's. Its ids start at
9501 (not 10001) so they keep four digits.

Data version 12 (ids numbered from 9701, files items/*_v12.jsonl) is the next fresh held-out
test set: version 11 was evaluated once (session 7, revision .10: scam false positives 7.4%,
deception recall 88.3%, dangerous recall 88.1%) and prompted a change. The rule was committed
before its items were written: every version-12 item goes to `test`, and version 11's items
become `test_v11` (retired, usable for training). Its sizes are version 11's.

Stdlib only. Run from anywhere:  python3 data/detection/make_split.py
Use --check to validate and print counts without rewriting splits.json
(exits non-zero if the existing file disagrees with the computed split).
"""
import hashlib
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ITEMS = HERE / "items"
OUT = HERE / "splits.json"
SALT = "featureguard-split-v1"
SALT_V2 = "featureguard-split-v2"
SALT_V6 = "featureguard-split-v6"
SALT_V9 = "featureguard-split-v9"
# data version -> first id number (a version runs up to the next one's first id)
V_FIRST = {1: 1, 2: 1001, 3: 2001, 4: 3001, 5: 4001, 6: 5001, 7: 6001, 8: 7001, 9: 8001, 10: 9001, 11: 9501, 12: 9701}
# versions whose every item goes to one split: the retired test sets and the fresh one
TEST_VERSIONS = {3: "test_v3", 4: "test_v4", 5: "test_v5", 7: "test_v7", 8: "test_v8", 10: "test_v10", 11: "test_v11", 12: "test"}
# versions split by their own salt: two thirds train, the rest dev, none test
TRAIN_DEV_SALTS = {2: SALT_V2, 6: SALT_V6, 9: SALT_V9}
SPLIT_NAMES = ("train", "dev", "test_v1", *TEST_VERSIONS.values())
CATEGORIES = ("scam", "deception", "dangerous", "benign")
# minimum counts per (category, hard_negative) stratum
MINIMUMS = {
    ("scam", False): 120,
    ("deception", False): 120,
    ("dangerous", False): 120,
    ("benign", False): 250,
    ("benign", True): 150,
}
MIN_TEXT_ITEMS = {"scam": 30, "deception": 30, "dangerous": 30}
ROLES = {"system", "user", "assistant"}
NEAR_DUP_JACCARD = 0.6  # word-trigram Jaccard above this is flagged


def load():
    items, errors = [], []
    for path in sorted(ITEMS.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                where = f"{path.name}:{lineno}"
                if not line.strip():
                    errors.append(f"{where}: blank line")
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    errors.append(f"{where}: bad JSON ({e})")
                    continue
                errs = check_item(obj)
                if not errs and file_version(path.name) != version(obj["id"]):
                    errs = [misfiled(obj["id"])]
                errors.extend(f"{where}: {m}" for m in errs)
                obj["_where"] = where
                items.append(obj)
    return items, errors


def check_item(o):
    errs = []
    if not isinstance(o.get("id"), str) or not re.fullmatch(r"[a-z]+-\d{4}", o["id"]):
        errs.append(f"bad id {o.get('id')!r} (want <prefix>-NNNN)")
    if o.get("category") not in CATEGORIES:
        errs.append(f"bad category {o.get('category')!r}")
    if not isinstance(o.get("hard_negative"), bool):
        errs.append("hard_negative must be a bool")
    elif o["hard_negative"] and o.get("category") != "benign":
        errs.append("hard negatives must have category 'benign'")
    has_text, has_msgs = "text" in o, "messages" in o
    if has_text == has_msgs:
        errs.append("need exactly one of 'text' / 'messages'")
    if has_text and (not isinstance(o["text"], str) or not o["text"].strip()):
        errs.append("empty text")
    if has_msgs:
        msgs = o["messages"]
        if not isinstance(msgs, list) or not msgs:
            errs.append("messages must be a non-empty list")
        else:
            for m in msgs:
                if (not isinstance(m, dict) or m.get("role") not in ROLES
                        or not isinstance(m.get("content"), str)
                        or not m["content"].strip()):
                    errs.append(f"bad message {m!r}")
            if msgs and msgs[-1].get("role") != "user":
                errs.append("last message should be from the user")
    extra = set(o) - {"id", "category", "hard_negative", "text", "messages"}
    if extra:
        errs.append(f"unexpected keys {sorted(extra)}")
    return errs


def content(o):
    if "text" in o:
        return o["text"]
    return "\n".join(m["content"] for m in o["messages"])


def shingles(s, n=3):
    w = re.findall(r"[a-z0-9']+", s.lower())
    return {tuple(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def near_duplicates(items):
    sh = [(o["id"], shingles(content(o))) for o in items]
    hits = []
    for i in range(len(sh)):
        for j in range(i + 1, len(sh)):
            a, b = sh[i][1], sh[j][1]
            inter = len(a & b)
            if inter and inter / len(a | b) > NEAR_DUP_JACCARD:
                hits.append((sh[i][0], sh[j][0], inter / len(a | b)))
    return hits


def version(item_id):
    """The data version an id belongs to, by its number (V_FIRST)."""
    n = int(item_id.rsplit("-", 1)[1])
    return max(v for v, first in V_FIRST.items() if n >= first)


def file_version(name):
    """The data version of an items file: N for *_vN.jsonl, 1 without a suffix."""
    m = re.search(r"_v(\d+)\.jsonl$", name)
    return int(m.group(1)) if m else 1


def misfiled(item_id):
    v = version(item_id)
    nxt = V_FIRST.get(v + 1)
    ids = f"{V_FIRST[v]}-{nxt - 1}" if nxt else f"from {V_FIRST[v]}"
    home = "files without a _vN suffix" if v == 1 else f"*_v{v}.jsonl files"
    return f"ids numbered {ids} belong in {home}, and only they"


def salted_key(item_id, salt):
    return hashlib.sha256((item_id + salt).encode("utf-8")).hexdigest()


def make_split(items):
    strata = defaultdict(list)  # (version, category, hard_negative) -> ids
    splits = {}
    for o in items:
        v = version(o["id"])
        if v in TEST_VERSIONS:  # a test set: reported once, then retired (module doc)
            splits[o["id"]] = TEST_VERSIONS[v]
        else:
            strata[(v, o["category"], o["hard_negative"])].append(o["id"])
    for (v, *_), ids in strata.items():
        if v == 1:
            ids = sorted(ids, key=lambda i: salted_key(i, SALT))
            n = len(ids)
            n_train, n_dev = round(n * 0.5), round(n * 0.25)
            for k, i in enumerate(ids):
                # version 1's own test items were reported once (session 3), then retired
                splits[i] = "train" if k < n_train else "dev" if k < n_train + n_dev else "test_v1"
        else:  # train / dev only, never test
            ids = sorted(ids, key=lambda i: salted_key(i, TRAIN_DEV_SALTS[v]))
            n_train = round(len(ids) * 2 / 3)
            for k, i in enumerate(ids):
                splits[i] = "train" if k < n_train else "dev"
    return dict(sorted(splits.items()))


def report(items, splits):
    rows = Counter()
    kinds = Counter()
    for o in items:
        key = (o["category"], o["hard_negative"])
        rows[key + (splits[o["id"]],)] += 1
        kinds[key + ("text" if "text" in o else "messages",)] += 1
    lines = ["| category | hard_negative | " + " | ".join(SPLIT_NAMES) + " | total | text | messages |",
             "|---" * (len(SPLIT_NAMES) + 5) + "|"]
    tot = Counter()
    for key in sorted({k[:2] for k in rows}, key=lambda k: (CATEGORIES.index(k[0]), k[1])):
        c = [rows[key + (s,)] for s in SPLIT_NAMES]
        t = [kinds[key + (k,)] for k in ("text", "messages")]
        for s, v in zip(SPLIT_NAMES + ("text", "messages"), c + t):
            tot[s] += v
        lines.append(f"| {key[0]} | {str(key[1]).lower()} | " + " | ".join(map(str, c))
                     + f" | {sum(c)} | {t[0]} | {t[1]} |")
    total = sum(tot[s] for s in SPLIT_NAMES)
    lines.append("| **all** | | " + " | ".join(str(tot[s]) for s in SPLIT_NAMES)
                 + f" | {total} | {tot['text']} | {tot['messages']} |")
    return "\n".join(lines)


def main():
    check_only = "--check" in sys.argv[1:]
    items, errors = load()
    ids = Counter(o.get("id") for o in items)
    errors += [f"duplicate id {i!r} ({n}x)" for i, n in ids.items() if n > 1]
    exact = Counter(content(o).strip().lower() for o in items if not check_item(o))
    errors += [f"duplicate content: {c[:60]!r}" for c, n in exact.items() if n > 1]
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)

    counts = Counter((o["category"], o["hard_negative"]) for o in items)
    for key, minimum in MINIMUMS.items():
        if counts[key] < minimum:
            errors.append(f"{key}: {counts[key]} items < minimum {minimum}")
    text_counts = Counter(o["category"] for o in items if "text" in o and not o["hard_negative"])
    for cat, minimum in MIN_TEXT_ITEMS.items():
        if text_counts[cat] < minimum:
            errors.append(f"{cat}: {text_counts[cat]} text items < minimum {minimum}")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)

    dups = near_duplicates(items)
    for a, b, j in dups:
        print(f"WARNING near-duplicate {a} ~ {b} (jaccard {j:.2f})", file=sys.stderr)

    splits = make_split(items)
    print(f"{len(items)} items, {len(dups)} near-duplicate pairs (trigram Jaccard > {NEAR_DUP_JACCARD})")
    print(report(items, splits))
    if check_only:
        if not OUT.exists() or json.loads(OUT.read_text(encoding="utf-8")) != splits:
            print(f"{OUT.name} is missing or out of date; rerun without --check", file=sys.stderr)
            sys.exit(1)
        print(f"{OUT.name} is up to date")
    else:
        OUT.write_text(json.dumps(splits, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {OUT.relative_to(HERE.parent.parent)}")


if __name__ == "__main__":
    main()
