"""Is a file named .txt/.md/.html really text? Decided by its content, not its name.

A ZIP, an image or random bytes renamed `notes.txt` used to be decoded as cp1252 and
stored: thousands of chunks of mojibake that then turn up in search. Text has no NUL
bytes (except UTF-16/32, recognised by their byte order mark) and almost no control
characters; binary data has both within its first few kilobytes (random bytes: about one
byte in eight is a control character). `filetype` names the format from its magic
number, so the error can say what the file is ("a PNG image").
"""
from __future__ import annotations

import codecs
import re

import filetype

# Share of control characters (other than tab, newline, carriage return, form feed) above
# which decoded "text" is taken for binary data. Real text here has none or a few (an
# escape sequence in a log); random bytes about 12%.
MAX_CONTROL_SHARE = 0.01
SNIFF_CHARS = 65_536
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# C0 and C1 controls other than tab, newline, vertical tab, form feed, carriage return;
# U+FFFD is what cp1252 decoding leaves for its five undefined bytes.
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")


class NotText(ValueError):
    """The bytes are not text (rag.extract turns this into a DocumentError)."""


def _what(data: bytes) -> str:
    kind = filetype.guess(data[:8192])
    return f"a {kind.mime} file (.{kind.extension})" if kind is not None else "binary data"


def _control_share(text: str) -> float:
    sample = text[:SNIFF_CHARS]
    if not sample:
        return 0.0
    return len(_CONTROLS.findall(sample)) / len(sample)


def decode_text(data: bytes) -> str:
    """The text of `data`: UTF-8 (BOM or not), UTF-16/32 with a BOM, else cp1252 (old
    Windows files). `NotText` when the content is not text, whatever the file's name."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError:
                raise NotText(f"the file starts like {codec} text but is not: it looks like {_what(data)}") from None
    if b"\x00" in data:
        raise NotText(f"the file is not text: it looks like {_what(data)}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    if _control_share(text) > MAX_CONTROL_SHARE:
        raise NotText(f"the file is not text: it looks like {_what(data)}")
    return text
