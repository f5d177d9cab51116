"""How well `charrnn check` finds typos, against the left-to-right model's surprisal and hunspell.

Synthetic typos at a known rate and a fixed seed go into held-out text (the last 10% of a corpus,
which a run trained on it with the default --val-fraction never saw; all of it, or --chars of it):
substitutions, insertions, deletions and swaps of adjacent letters for English; substitutions with
other characters of the vocabulary for Chinese. Each system flags positions; a flag within one
character of a true error counts. Reported: detection precision, recall and F1, and correction
accuracy (the share of true errors whose nearby finding's edit gives back the original text exactly).
`f1_one_to_one` counts each error once: a second flag next to the same error is a false alarm there.

    python benchmarks/typo_check.py --bidirectional runs/bi --left-to-right runs/lr \\
        --corpus ../shared/corpora/tinyshakespeare.txt --language en [--hunspell]

Not installed with the package; needs hunspell and hunspell-en-us for --hunspell.
"""

import argparse
import json
import math
import random
import re
import subprocess
import sys
import time

import numpy as np

from charrnn import load

ENGLISH = "abcdefghijklmnopqrstuvwxyz"


def held_out(path: str, chars: int = 0, skip: int = 0, fraction: float = 0.1) -> str:
    """`chars` characters (0: all) of the corpus's last `fraction`, after the first `skip` of them."""
    text = open(path, encoding="utf-8").read()
    part = text[len(text) - int(len(text) * fraction) :][skip:]
    return part[:chars] if chars else part


def corrupt(text: str, rate: float, seed: int, language: str, vocabulary: list[str]):
    """(corrupted text, errors): each error is (start, end, original) in the corrupted text, so that
    corrupted[:start] + original + corrupted[end:] undoes it alone."""
    rng = random.Random(seed)
    letters = [i for i, c in enumerate(text) if (c.isalpha() if language == "en" else "\u4e00" <= c <= "\u9fff")]
    chosen = sorted(rng.sample(letters, int(len(text) * rate)))
    chosen = [p for k, p in enumerate(chosen) if k == 0 or p - chosen[k - 1] > 3]  # errors apart
    out, errors, shift, last = [], [], 0, 0
    for p in chosen:
        out.append(text[last:p])
        here = p + shift
        kind = "substitute" if language == "zh" else rng.choice(["substitute", "insert", "delete", "swap"])
        c = text[p]
        pool = vocabulary if language == "zh" else (ENGLISH.upper() if c.isupper() else ENGLISH)
        if kind == "swap" and not (p + 1 < len(text) and text[p + 1].isalpha() and text[p + 1] != c):
            kind = "substitute"
        if kind == "substitute":
            new = rng.choice([x for x in pool if x != c])
            out.append(new)
            errors.append((here, here + 1, c, kind))
            last = p + 1
        elif kind == "insert":
            new = rng.choice(pool)
            out.append(new + c)
            errors.append((here, here + 1, "", kind))
            shift += 1
            last = p + 1
        elif kind == "delete":
            errors.append((here, here, c, kind))
            shift -= 1
            last = p + 1
        else:
            out.append(text[p + 1] + c)
            errors.append((here, here + 2, c + text[p + 1], kind))
            last = p + 2
    out.append(text[last:])
    return "".join(out), errors


def score(flags: list, errors, fixes=None, corrupted: str = "") -> dict:
    """Precision, recall, F1 and correction accuracy. A flag is a position, or (first, last) of a
    flagged word; it is right if a true error lies within one character of it."""
    spans = sorted({(f, f) if isinstance(f, int) else tuple(f) for f in flags})
    near = [(s - 1, max(e, s + 1)) for s, e, *_ in errors]  # positions within one character of each error

    def overlaps(span, lo, hi):
        return span[0] <= hi and span[1] >= lo

    hits = sum(any(overlaps(span, lo, hi) for lo, hi in near) for span in spans)
    found = [any(overlaps(span, lo, hi) for span in spans) for lo, hi in near]
    precision = hits / len(spans) if spans else 0.0
    recall = sum(found) / len(errors)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    # Each error counted once: two flags next to one error are one hit and one false alarm here, where
    # the measure above counts both (which favours a system that flags every surprising position).
    matched = min(hits, sum(found))
    p121 = matched / len(spans) if spans else 0.0
    r121 = matched / len(errors)
    f121 = 2 * p121 * r121 / (p121 + r121) if p121 + r121 else 0.0
    result = {"flags": len(spans), "precision": precision, "recall": recall, "f1": f1, "f1_one_to_one": f121}
    if fixes is not None:
        fixed = 0
        for (s, e, original, _), (lo, hi) in zip(errors, near, strict=True):
            reverted = corrupted[:s] + original + corrupted[e:]
            fixed += any(
                lo <= at <= hi and corrupted[:a] + text + corrupted[b:] == reverted for at, a, b, text in fixes
            )
        result["correction"] = fixed / len(errors)
    return result


def hunspell(corrupted: str) -> tuple[list[int], list[tuple]]:
    words = [(m.start(), m.group()) for m in re.finditer(r"[A-Za-z]+(?:'[A-Za-z]+)?", corrupted)]
    unique = sorted({w for _, w in words})
    done = subprocess.run(
        ["hunspell", "-a", "-d", "en_US"], input="\n".join(unique) + "\n", capture_output=True, text=True
    )
    verdicts = [line for line in done.stdout.splitlines()[1:] if line]
    wrong, suggestion = set(), {}
    for word, line in zip(unique, verdicts, strict=False):
        if line[0] in "&#":
            wrong.add(word)
            if line[0] == "&" and ":" in line:
                suggestion[word] = line.split(":", 1)[1].split(",")[0].strip()
    flags, fixes = [], []
    for start, word in words:
        if word in wrong:
            flags.append((start, start + len(word) - 1))  # one flag per word
            if word in suggestion:
                fixes += [(at, start, start + len(word), suggestion[word]) for at in range(start, start + len(word))]
    return flags, fixes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bidirectional", required=True)
    parser.add_argument("--left-to-right", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--language", choices=["en", "zh"], default="en")
    parser.add_argument("--chars", type=int, default=0, help="characters of the held-out text to test (0: all)")
    parser.add_argument("--rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", type=int, default=0, help="held-out characters before the test's (another slice)")
    parser.add_argument("--thresholds", default="default,4,6,8", help="'default': check's own")
    parser.add_argument("--hunspell", action="store_true")
    args = parser.parse_args()
    if args.chars < 0 or args.skip < 0:
        parser.error("--chars and --skip count characters: 0 or more")
    bi, lr = load(args.bidirectional), load(args.left_to_right)
    original = held_out(args.corpus, args.chars, args.skip)
    vocabulary = [c for c in bi.vocab.chars if "\u4e00" <= c <= "\u9fff"] or list(ENGLISH)
    corrupted, errors = corrupt(original, args.rate, args.seed, args.language, vocabulary)
    kinds = {k: sum(e[3] == k for e in errors) for k in ("substitute", "insert", "delete", "swap")}
    print(f"{len(corrupted):,} characters, {len(errors)} errors {kinds}", file=sys.stderr)
    checker = bi.checker()
    started = time.perf_counter()
    judged = checker.cloze(corrupted)
    cloze_seconds = time.perf_counter() - started
    (left,) = lr.score([corrupted], context=True, details=True, unknown="skip")
    d = left.details
    known = [i for i, c in enumerate(corrupted) if c in lr.vocab] + [len(corrupted)]  # and the newline
    known = known[: len(d.logprob)]  # no newline scored after a text that ends with one
    gap_lr = np.full(len(corrupted) + 1, 0.0)
    gap_lr[known] = np.maximum(np.log(d.top_probs[:, 0]) - d.logprob, 0.0)
    surprisal = np.full(len(corrupted) + 1, 0.0)
    surprisal[known] = -d.logprob
    rows = []
    for threshold in [checker.threshold if t == "default" else float(t) for t in args.thresholds.split(",")]:
        started = time.perf_counter()
        findings = checker.check(corrupted, threshold, judged=judged)
        seconds = cloze_seconds + time.perf_counter() - started
        fixes = [(f.offset, *f.span, f.suggestion) for f in findings if f.edit]
        row = {
            "system": "check",
            "threshold": threshold,
            **score([f.offset for f in findings], errors, fixes, corrupted),
        }
        row["chars_per_second"] = len(corrupted) / seconds
        rows.append(row)
        flags = [int(i) for i in np.flatnonzero(-judged.logprob > threshold)]
        rows.append({"system": "cloze surprisal", "threshold": threshold, **score(flags, errors)})
        flags = [int(i) for i in np.flatnonzero(surprisal[: len(corrupted)] > threshold)]
        rows.append({"system": "left-to-right surprisal", "threshold": threshold, **score(flags, errors)})
        flags = [int(i) for i in np.flatnonzero(gap_lr[: len(corrupted)] > threshold)]
        rows.append({"system": "left-to-right gap to best guess", "threshold": threshold, **score(flags, errors)})
    if args.hunspell:
        flags, fixes = hunspell(corrupted)
        rows.append({"system": "hunspell en_US", "threshold": math.nan, **score(flags, errors, fixes, corrupted)})
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
