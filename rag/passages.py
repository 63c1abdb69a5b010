"""A course passage cut into what can be quoted: whole sentences, list items, code blocks.

Why a real sentence splitter: splitting at every full stop cut "Deprecated since version
3.6: pyvenv was ..." into "Deprecated since version 3." and "6: pyvenv was ...", and
"e.g." or "i.e." in the middle of a sentence the same way. `sentencex` (Wikimedia's
segmenter, maintained, rule-based, about 300 languages including French and Arabic, no
model to load) knows abbreviations and numbers; we only add what it cannot know: the
structure of our extracted text (Markdown headings, list items, fenced or indented code,
interactive `>>>` sessions), which must not be run through a prose splitter.

Debris is dropped here, not at quoting time: a list item or line that is a bare name
("EnvBuilder."), a heading, a title or fragment without closing punctuation (a chunk that
ended mid-sentence), a lower-case start at the chunk's start (it began mid-sentence).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from sentencex import segment

from rag.fences import fence_for, opening

UnitKind = Literal["sentence", "code"]

_HEADING = re.compile(r"^#{1,6}\s")
_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_PROMPT = re.compile(r"^(?:>>>|\.\.\.|\$|%|In \[\d+\]:)(?:\s|$)")
_INDENTED = re.compile(r"^(?: {4}|\t)")
_WORD = re.compile(r"\w+", re.UNICODE)
# Closing punctuation a whole sentence ends with (optionally followed by quotes/brackets).
_CLOSED = re.compile(r"[.!?:;…؟。][\"'»”’)\]]*\s*$")
_MIN_WORDS = 4


@dataclass(frozen=True)
class Unit:
    """One quotable piece of a passage, in document order (`index`)."""

    kind: UnitKind
    text: str
    index: int
    paragraph: int = 0  # units of one paragraph share it; a code block is its own
    introduces_code: bool = False  # the paragraph ends with ":" right before a code block

    def markdown(self) -> str:
        """As Markdown: code fenced (indentation kept), prose as it is."""
        if self.kind != "code":
            return self.text
        fence = fence_for(self.text)
        return f"{fence}\n{self.text}\n{fence}"


@lru_cache(maxsize=8)
def _language(lang: str) -> str:
    return lang if lang in ("en", "fr", "ar") else "en"


def split_sentences(text: str, lang: str = "en") -> list[str]:
    """Sentences of one paragraph of prose, whole, whitespace-trimmed.

    A boundary with no space after it is no boundary ("lib/pythonX.Y/site-packages",
    "example.com/path"): sentencex sees "X." as an initial, so such pieces are glued back."""
    out: list[str] = []
    glue = False
    for piece in segment(_language(lang), text):
        if glue and out:
            out[-1] += piece
        else:
            out.append(piece)
        glue = bool(piece) and not piece[-1].isspace() and piece[-1] not in "。！？"
    return [s.strip() for s in out if s.strip()]


def _is_code_line(line: str) -> bool:
    return bool(_PROMPT.match(line) or _INDENTED.match(line))


def _dedent(lines: list[str]) -> str:
    """Remove the indentation common to every non-blank line, keep the rest."""
    widths = [len(line) - len(line.lstrip(" ")) for line in lines if line.strip()]
    cut = min(widths, default=0)
    return "\n".join(line[cut:] for line in lines).strip("\n")


def _blocks(content: str) -> list[tuple[UnitKind, str]]:
    """Code blocks and prose paragraphs (list items are paragraphs of their own)."""
    blocks: list[tuple[UnitKind, str]] = []
    lines = content.replace("\r\n", "\n").split("\n")
    prose: list[str] = []

    def end_prose() -> None:
        if not prose:
            return
        joined = " ".join(p.strip() for p in prose)
        if not _WORD.search(joined):  # a bare bullet ("-") or rule: nothing to quote
            prose.clear()
            return
        after_colon = bool(blocks) and blocks[-1][0] == "sentence" and blocks[-1][1].rstrip().endswith(":")
        if after_colon and not _CLOSED.search(joined):
            # "... executing the command venv:" then an unpunctuated paragraph: a command or
            # code shown without fences (HTML <pre> extracted as plain lines). Keep its lines.
            blocks.append(("code", _dedent(prose)))
        else:
            blocks.append(("sentence", joined))
        prose.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if (fence := opening(line)) is not None:
            end_prose()
            body: list[str] = []
            i += 1
            while i < len(lines) and not fence.closed_by(lines[i]):
                body.append(lines[i])
                i += 1
            blocks.append(("code", _dedent(body)))
            i += 1
            continue
        if _is_code_line(line) and not prose:
            # An indented block or an interactive session: runs until a blank line
            # followed by unindented prose (output lines of `>>>` belong to it).
            body = []
            while i < len(lines) and (lines[i].strip() == "" or _is_code_line(lines[i]) or
                                      (body and lines[i - 1].strip() != "")):
                body.append(lines[i])
                i += 1
            blocks.append(("code", _dedent(body)))
            continue
        if not line.strip():
            end_prose()
        elif _HEADING.match(line):
            end_prose()  # headings are context, never quoted
        elif _ITEM.match(line):
            end_prose()
            prose.append(_ITEM.sub("", line, count=1))
        else:
            prose.append(line)
        i += 1
    end_prose()
    return [(kind, text) for kind, text in blocks if text.strip()]


def _quotable(sentence: str, *, first: bool) -> bool:
    if len(_WORD.findall(sentence)) < _MIN_WORDS:
        return False  # a bare name or label: list debris
    if first and sentence[:1].islower():
        return False  # the chunk began mid-sentence (its overlap with the previous one)
    # No closing punctuation: a title, a table cell, or a chunk that ended mid-sentence.
    return bool(_CLOSED.search(sentence))


def units(content: str, lang: str = "en") -> list[Unit]:
    """The passage's quotable units, in document order.

    Every sentence of a paragraph that ends with ":" before a code block is marked
    `introduces_code`: quoting any of them brings the code ("... not equal. Some examples:")."""
    raw: list[tuple[UnitKind, str, int, bool]] = []
    blocks = _blocks(content)
    for p, (kind, text) in enumerate(blocks):
        if kind == "code":
            raw.append((kind, text, p, False))
            continue
        nxt = blocks[p + 1] if p + 1 < len(blocks) else None
        introduces = text.rstrip().endswith(":") and nxt is not None and nxt[0] == "code"
        sentences = split_sentences(text, lang)
        for s_n, sentence in enumerate(sentences):
            # "Some examples:" is short, but the code needs its introduction.
            keep_short = introduces and s_n == len(sentences) - 1
            raw.append(("sentence", sentence if keep_short or _quotable(sentence, first=not raw) else "", p, introduces))
    out: list[Unit] = []
    seen: set[str] = set()
    for n, (kind, text, p, introduces) in enumerate(raw):
        if kind == "sentence":
            key = " ".join(text.split()).casefold()
            if not key or key in seen:
                continue
            seen.add(key)
        out.append(Unit(kind, text, n, p, introduces))
    return out
