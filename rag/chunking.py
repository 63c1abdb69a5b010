"""Structure-aware chunking of normalised document text.

Chunks never cross a markdown heading, so every chunk has one heading path (e.g.
`["Install", "On Linux"]`) that the tutor can show and the embedder can use as context.
Inside a section, paragraphs are packed greedily under a token budget; a paragraph too big
for one chunk is cut at sentences, and a sentence too big at token boundaries. Consecutive
chunks of a section share about `overlap` tokens, starting at a sentence or word boundary,
so an answer that straddles a cut is still found whole in one chunk.

Every chunk's `content` is exactly `text[start_char:end_char]` of the text it came from.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from rag.fences import classify
from rag.tokens import count_tokens, encode, get_encoding

DEFAULT_MAX_TOKENS = 350
DEFAULT_OVERLAP_TOKENS = 50

_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# A sentence ends at . ! ? (maybe followed by quotes/brackets) plus whitespace, or at a newline.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n")


@dataclass(frozen=True)
class Chunk:
    """One retrievable piece of a document."""

    index: int
    content: str
    start_char: int
    end_char: int
    token_count: int
    heading_path: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Span:
    start: int
    end: int


@dataclass(frozen=True)
class _Section:
    heading_path: list[str]
    spans: list[_Span]  # paragraphs (the heading line itself included as the first one)


def _trimmed(text: str, start: int, end: int) -> _Span | None:
    """`[start, end)` without leading/trailing whitespace, or None if nothing is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return _Span(start, end) if start < end else None


def _split_by(text: str, span: _Span, pattern: re.Pattern[str]) -> list[_Span]:
    """Pieces of `span` between matches of `pattern`, trimmed, empty ones dropped."""
    pieces: list[_Span] = []
    pos = span.start
    for match in pattern.finditer(text, span.start, span.end):
        if (piece := _trimmed(text, pos, match.start())) is not None:
            pieces.append(piece)
        pos = match.end()
    if (piece := _trimmed(text, pos, span.end)) is not None:
        pieces.append(piece)
    return pieces


def _sections(text: str) -> list[_Section]:
    """Split at ATX headings (ignoring `#` lines inside fenced code) into paragraph spans."""
    bounds: list[tuple[int, list[str]]] = [(0, [])]
    stack: list[tuple[int, str]] = []
    pos = 0
    for line, kind in classify(text.split("\n")):
        if kind == "text" and (match := _HEADING.match(line)):
            level = len(match.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, match.group(2).strip()))
            bounds.append((pos, [title for _, title in stack]))
        pos += len(line) + 1
    sections = []
    for i, (start, path) in enumerate(bounds):
        end = bounds[i + 1][0] if i + 1 < len(bounds) else len(text)
        spans: list[_Span] = []
        if path:  # the heading line is a unit of its own, so its text is searchable too
            line_end = text.find("\n", start, end)
            line_end = end if line_end == -1 else line_end
            spans.append(_Span(start, line_end))
            start = line_end
        body = [] if (whole := _trimmed(text, start, end)) is None else _split_by(text, whole, _PARAGRAPH_BREAK)
        # A heading with no body of its own adds nothing its sub-sections' paths don't carry.
        if body:
            sections.append(_Section(path, spans + body))
    return sections


def _token_windows(text: str, span: _Span, size: int) -> list[_Span]:
    """Cut `span` at token boundaries into pieces of at most `size` tokens.

    A piece is re-counted on its own: a cut inside a multi-byte character can make the
    piece tokenise into more tokens than the window had, so such a window is shortened.
    """
    pieces: list[_Span] = []
    start = span.start
    while (first := _trimmed(text, start, span.end)) is not None:
        start = first.start
        window_end = min(span.end, start + size * 32)  # no token is longer than 32 chars here
        tokens = encode(text[start:window_end])
        if len(tokens) <= size:
            end = window_end
        else:
            _, offsets = get_encoding().decode_with_offsets(tokens)
            take = size
            end = start + offsets[take]
            while take > 1 and (end <= start or _span_tokens(text, start, end) > size):
                take -= 1
                end = start + offsets[take]
            end = max(end, start + 1)
        if (piece := _trimmed(text, start, end)) is not None:
            pieces.append(piece)
        start = end
    return pieces


def _span_tokens(text: str, start: int, end: int) -> int:
    """Tokens of `text[start:end]` once trimmed, as the chunk will hold it."""
    piece = _trimmed(text, start, end)
    return 0 if piece is None else count_tokens(text[piece.start:piece.end])


def _units(text: str, paragraphs: list[_Span], max_unit: int) -> list[_Span]:
    """Paragraphs, with any longer than `max_unit` tokens cut at sentences, then tokens."""
    units: list[_Span] = []
    for paragraph in paragraphs:
        if count_tokens(text[paragraph.start:paragraph.end]) <= max_unit:
            units.append(paragraph)
            continue
        for sentence in _split_by(text, paragraph, _SENTENCE_BREAK):
            if count_tokens(text[sentence.start:sentence.end]) <= max_unit:
                units.append(sentence)
            else:
                units.extend(_token_windows(text, sentence, max_unit))
    return units


def _overlap_start(text: str, prev: _Span, overlap: int) -> int:
    """Where the next chunk starts so it repeats about `overlap` tokens of `prev`.

    Never more than half of `prev` (a tiny chunk is not repeated whole). Starts at a
    sentence if one begins early in the overlap, else at a word; `prev.end` means none.
    """
    tokens = encode(text[prev.start:prev.end])
    n = min(overlap, len(tokens) // 2)
    if n <= 0:
        return prev.end
    _, offsets = get_encoding().decode_with_offsets(tokens)
    cut = prev.start + offsets[len(tokens) - n]
    window_middle = cut + (prev.end - cut) // 2
    sentence = _SENTENCE_BREAK.search(text, cut, window_middle)
    if sentence is not None and cut > prev.start and text[cut - 1] not in ".!?\n":
        cut = sentence.end()
    elif cut > prev.start and not text[cut - 1].isspace():
        while cut < prev.end and not text[cut].isspace():  # finish the word we landed in
            cut += 1
    while cut < prev.end and text[cut].isspace():
        cut += 1
    return cut


class TooManyChunks(ValueError):
    """The text makes more than `max_chunks` chunks (raised as soon as it does)."""


def chunk_text(
    text: str,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
    max_chunks: int = 0,
) -> list[Chunk]:
    """Split normalised document text into chunks of at most `max_tokens` tokens.

    `max_chunks` (0: no cap) stops the work at the first chunk past the cap."""
    if max_tokens < 8:
        raise ValueError("max_tokens must be at least 8")
    overlap_tokens = max(0, min(overlap_tokens, max_tokens // 2))
    max_unit = max_tokens - overlap_tokens
    chunks: list[Chunk] = []

    def emit(start: int, end: int, tokens: int, path: list[str]) -> None:
        if max_chunks and len(chunks) >= max_chunks:
            raise TooManyChunks(f"the document makes more than {max_chunks:,} chunks")
        chunks.append(Chunk(len(chunks), text[start:end], start, end, tokens, list(path)))

    for section in _sections(text):
        units = _units(text, section.spans, max_unit)
        prev: _Span | None = None
        i = 0
        while i < len(units):
            start = units[i].start
            if prev is not None and overlap_tokens:
                overlap_start = _overlap_start(text, prev, overlap_tokens)
                if overlap_start < prev.end:
                    start = overlap_start
            if count_tokens(text[start:units[i].end]) > max_tokens:
                start = units[i].start  # the overlap does not fit next to this unit
            end, tokens = units[i].end, count_tokens(text[start:units[i].end])
            i += 1
            while i < len(units):
                candidate = count_tokens(text[start:units[i].end])
                if candidate > max_tokens:
                    break
                end, tokens = units[i].end, candidate
                i += 1
            emit(start, end, tokens, section.heading_path)
            prev = _Span(start, end)
    return chunks
