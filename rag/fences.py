"""Fenced code blocks in our extracted Markdown: the one rule every reader of it follows.

Extraction (rag/extract.py), chunking (rag/chunking.py) and quoting (rag/passages.py) must
agree on which lines are code, or a `# comment` inside code becomes a heading in one and not
in the other. They used to have four rules of their own; the chunker's toggled on any line
starting with three backticks, so a four-backtick fence around code that shows a
three-backtick fence (Markdown documentation, rag/html.py writes such fences) ended early
and the code's `# lines` became section headings.

The rule is CommonMark's (spec 0.31, "Fenced code blocks"), for lines as our normalised
text has them: a fence opens with three or more backticks or tildes (a backtick fence's
info string may hold no backtick), after at most three spaces; it closes only on a line of
the same character, at least as long, with nothing but spaces after it; a fence never
closed runs to the end of the text.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

LineKind = Literal["text", "open", "code", "close"]

_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_BACKTICKS = re.compile(r"`+")


@dataclass(frozen=True)
class Fence:
    """An open fence: its character and length (what a closing line must match)."""

    char: str
    length: int

    def closed_by(self, line: str) -> bool:
        stripped = line.strip(" ")
        return (len(line) - len(line.lstrip(" ")) <= 3 and len(stripped) >= self.length
                and stripped == self.char * len(stripped))


def opening(line: str) -> Fence | None:
    """The fence `line` opens, or None."""
    match = _OPEN.match(line)
    if match is None:
        return None
    fence = match.group("fence")
    if fence[0] == "`" and "`" in match.group("info"):
        return None  # "```a`b" is inline code, not a fence
    return Fence(fence[0], len(fence))


class FenceState:
    """Reads lines one at a time and says what each is: prose (`text`), a fence opening,
    a line of code, or the closing fence. Stateful, so a caller that changes lines as it
    reads them (normalisation) can feed each line in the form it will keep."""

    def __init__(self) -> None:
        self.fence: Fence | None = None

    @property
    def in_code(self) -> bool:
        return self.fence is not None

    def feed(self, line: str) -> LineKind:
        if self.fence is None:
            self.fence = opening(line)
            return "open" if self.fence is not None else "text"
        if self.fence.closed_by(line):
            self.fence = None
            return "close"
        return "code"


def classify(lines: Iterable[str]) -> Iterator[tuple[str, LineKind]]:
    """Each line with its kind, in order."""
    state = FenceState()
    for line in lines:
        yield line, state.feed(line)


def fence_for(code: str) -> str:
    """A backtick fence longer than any run of backticks in `code`, so nothing in it closes it."""
    longest = max((len(m.group()) for m in _BACKTICKS.finditer(code)), default=0)
    return "`" * max(3, longest + 1)
