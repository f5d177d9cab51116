"""Pictures of what the model finds surprising: each character coloured by its surprisal.

`html_page` writes one self-contained page (no scripts, no network: CSS-only tooltips show each
character's probability and the model's five likeliest alternatives); `rich_line` gives the same
colours for the terminal. Both take `LineScore`s scored with ``details=True``.
"""

import html
import math
from collections.abc import Iterable

from charrnn.scoring import LineScore, Summary
from charrnn.vocab import Vocabulary

LEVELS = 20  # colour steps, half a bit each: 0 .. 10 bits and more
STEP_BITS = 0.5
_PALETTE = ((0.0, (236, 248, 236)), (0.35, (255, 236, 153)), (0.7, (250, 140, 80)), (1.0, (214, 39, 40)))
_SHOWN = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def colour(level: int) -> tuple[int, int, int]:
    """Background colour of surprisal level `level` (0 = expected .. LEVELS = very surprising)."""
    t = min(max(level / LEVELS, 0.0), 1.0)
    for (t0, c0), (t1, c1) in zip(_PALETTE, _PALETTE[1:], strict=False):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return tuple(round(a + f * (b - a)) for a, b in zip(c0, c1, strict=True))
    return _PALETTE[-1][1]


def level(logprob: float) -> int:
    bits = -logprob / math.log(2)
    return min(LEVELS, max(0, int(bits / STEP_BITS)))


def shown(char: str) -> str:
    return _SHOWN.get(char, char)


def _characters(score: LineScore, vocab: Vocabulary):
    """(character, index into the details or None for a character left out as unknown) of the line,
    its newline last (when it was scored)."""
    k = 0
    for char in score.text:
        if char in vocab:
            yield char, k
            k += 1
        else:
            yield char, None
    if k < score.chars:  # the newline
        yield "\n", k


def _tip(char: str, k: int, score: LineScore, vocab: Vocabulary) -> str:
    d = score.details
    p = math.exp(float(d.logprob[k]))
    lines = [f"{shown(char)}  p = {p:.4f}  ({-float(d.logprob[k]) / math.log(2):.2f} bits)", "likeliest:"]
    for rank, (i, q) in enumerate(zip(d.top_ids[k], d.top_probs[k], strict=True), 1):
        lines.append(f"{rank}. {shown(vocab.chars[int(i)])}  {float(q):.4f}")
    return "\n".join(lines)


def html_page(scores: Iterable[LineScore], vocab: Vocabulary, title: str, summary: Summary | None = None) -> str:
    """One HTML page of the scored lines; hover (or open ``#cN``) for a character's details."""
    body, n = [], 0
    for score in scores:
        for char, k in _characters(score, vocab):
            if k is None:
                tip = f"{shown(char)}  not in the vocabulary: left out"
                body.append(f'<span class="u" data-tip="{html.escape(tip)}">{html.escape(char)}</span>')
                continue
            n += 1
            tip = html.escape(_tip(char, k, score, vocab)).replace("\n", "&#10;")
            text = "↵" if char == "\n" else html.escape(char)
            body.append(
                f'<span id="c{n}" class="s{level(float(score.details.logprob[k]))}" data-tip="{tip}">{text}</span>'
                + ("\n" if char == "\n" else "")
            )
        if score.chars == 0:
            body.append("\n")
    styles = "\n".join(f".s{i}{{background:rgb{colour(i)}}}" for i in range(LEVELS + 1))
    legend = "".join(
        f'<span class="s{i}">{i * STEP_BITS:g}{"+" if i == LEVELS else ""}</span> ' for i in range(0, LEVELS + 1, 2)
    )
    about = ""
    if summary is not None and summary.chars:
        about = (
            f"{summary.lines:,} lines, {summary.chars:,} characters: {summary.bits_per_char:.4f} bits/char, "
            f"perplexity {summary.perplexity:.3f}" + (f", {summary.oov:,} unknown left out" if summary.oov else "")
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:ui-monospace,Menlo,Consolas,monospace;margin:2em;color:#111;background:#fff}}
h1{{font-size:1.1em}} .about{{color:#555}}
.text{{white-space:pre-wrap;line-height:1.7;font-size:15px}}
.text span{{position:relative}}
.text span:hover{{outline:1px solid #333}}
.text span:hover::after,.text span:target::after{{content:attr(data-tip);position:absolute;left:0;top:1.6em;
z-index:9;white-space:pre;background:#222;color:#eee;padding:6px 8px;border-radius:4px;font-size:12px;
line-height:1.4;pointer-events:none}}
.text span:target{{outline:2px solid #000}}
.u{{color:#999;text-decoration:line-through}}
.legend span{{padding:0 4px}}
{styles}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="about">{html.escape(about)}</p>
<p class="legend">surprisal, bits: {legend}</p>
<div class="text">{"".join(body)}</div>
</body></html>
"""


def rich_line(score: LineScore, vocab: Vocabulary):
    """The line as a rich Text, each character on its surprisal colour (the newline as ↵)."""
    from rich.text import Text

    text = Text()
    for char, k in _characters(score, vocab):
        if k is None:
            text.append(char, style="strike grey50")
            continue
        shade = "rgb({},{},{})".format(*colour(level(float(score.details.logprob[k]))))
        text.append("↵" if char == "\n" else char, style=f"black on {shade}")
    return text


# -- `charrnn check`: the text with what does not fit marked --------------------------------------
def describe_finding(finding) -> str:
    """What a finding proposes, in words: `'x' -> 'y'`, `delete 'x'`, `insert 'c' before 'x'`..."""
    char = repr(finding.char)
    if finding.edit == "replace":
        return f"{char} -> {finding.suggestion!r}"
    if finding.edit == "delete":
        return f"delete {char}"
    if finding.edit == "insert":
        return f"insert {finding.suggestion[0]!r} before {char}"
    if finding.edit == "swap":
        return f"{finding.suggestion[::-1]!r} -> {finding.suggestion!r}"
    return f"{char} (likeliest here {finding.best!r})"


def _check_tip(char: str, logprob: float, top: list[tuple[str, float]], finding) -> str:
    lines = [f"{shown(char)}  p = {math.exp(logprob):.4f}  ({-logprob / math.log(2):.2f} bits)"]
    if finding is not None:
        lines.insert(0, describe_finding(finding))
    lines.append("likeliest here:")
    lines += [f"{rank}. {shown(c)}  {p:.4f}" for rank, (c, p) in enumerate(top, 1)]
    return "\n".join(lines)


def check_page(text: str, judged, findings, vocab: Vocabulary, title: str) -> str:
    """One HTML page of a checked text: every character on its cloze surprisal's colour, the flagged
    ones outlined and listed; hover for the suggestion and the likeliest characters."""
    flagged = {f.offset: f for f in findings}
    body = []
    for i, char in enumerate(text):
        top = [(vocab.chars[int(k)], float(p)) for k, p in zip(judged.top_ids[i], judged.top_probs[i], strict=True)]
        logprob = float(judged.logprob[i])
        finding = flagged.get(i)
        tip = html.escape(_check_tip(char, logprob, top, finding)).replace("\n", "&#10;")
        classes = f"s{level(logprob)}" + (" f" if finding is not None else "")
        anchor = f' id="f{finding.line}-{finding.column}"' if finding is not None else ""
        shown_char = "↵" if char == "\n" else html.escape(char)
        body.append(
            f'<span{anchor} class="{classes}" data-tip="{tip}">{shown_char}</span>' + ("\n" if char == "\n" else "")
        )
    listing = "".join(
        f'<li><a href="#f{f.line}-{f.column}">{f.line}:{f.column}</a> {html.escape(describe_finding(f))}</li>'
        for f in findings
    )
    page = html_page([], vocab, title)
    styles = ".f{outline:2px solid #c00;outline-offset:1px;font-weight:bold}\n.findings{columns:3;font-size:13px}"
    about = f"{len(findings):,} characters flagged in {len(text):,}"
    return (
        page.replace("</style>", styles + "\n</style>")
        .replace(
            '<p class="about"></p>', f'<p class="about">{html.escape(about)}</p><ol class="findings">{listing}</ol>'
        )
        .replace('<div class="text"></div>', f'<div class="text">{"".join(body)}</div>')
    )


def rich_check(text: str, judged, findings):
    """The checked text as a rich Text: surprisal colours, flagged characters in bold red on white."""
    from rich.text import Text

    flagged = {f.offset for f in findings}
    out = Text()
    for i, char in enumerate(text):
        if i in flagged:
            out.append("↵\n" if char == "\n" else char, style="bold white on red")
            continue
        shade = "rgb({},{},{})".format(*colour(level(float(judged.logprob[i]))))
        out.append(char if char != "\n" else "\n", style=f"black on {shade}" if char != "\n" else "")
    return out
