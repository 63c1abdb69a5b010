"""The `hashing` embedder: feature hashing, offline, no model, deterministic across processes.

Kept for tiny installs and for the test suite, where it is fast; it matches by shared words,
stems and phrases only (see docs/tutor.md for how it compares with the neural default).
"""
from __future__ import annotations

import asyncio
import hashlib
import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from itertools import pairwise
from typing import ClassVar

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its
itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were
what when where which while who whom why will with would you your yours yourself yourselves
""".split())

_WORD = re.compile(r"\w+")


def _stem(word: str) -> str:
    """A deliberately light English suffix stripper (installing, installed, installs -> install)."""
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ied"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("ed"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    """Lower-cased, accent-free, lightly stemmed words without stopwords."""
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    words = []
    for word in _WORD.findall(text):
        if word in STOPWORDS:
            continue
        words.append(_stem(word))
    return words


@lru_cache(maxsize=1 << 18)
def _feature_hash(feature: str) -> int:
    """Stable 64-bit hash (blake2b): Python's hash() differs between processes."""
    return int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "big")


def _hashed(features: Counter[str], dim: int) -> list[float]:
    """Signed feature hashing with sublinear tf, L2-normalised (zero vector if no features)."""
    vector = [0.0] * dim
    for feature, count in features.items():
        digest = _feature_hash(feature)
        sign = 1.0 if digest >> 63 else -1.0
        vector[digest % dim] += sign * (1.0 + math.log(count))
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


class HashingEmbedder:
    """Bag of words, word bigrams and character 3-5-grams, hashed into `dim` dimensions.

    No model and no network, yet it matches paraphrases sharing word stems (char n-grams)
    and phrases (bigrams). The three feature groups are normalised separately and mixed
    with fixed weights so long words don't drown the word-level signal.
    """

    WEIGHTS: ClassVar[dict[str, float]] = {"w": 1.0, "b": 0.5, "c": 0.6}

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}-v1"

    def embed_one(self, text: str) -> list[float]:
        words = _words(text)
        groups: dict[str, Counter[str]] = {
            "w": Counter(f"w:{w}" for w in words),
            "b": Counter(f"b:{a} {b}" for a, b in pairwise(words)),
            "c": Counter(
                f"c:{padded[i:i + n]}"
                for padded in (f"<{w}>" for w in words)
                for n in (3, 4, 5)
                for i in range(len(padded) - n + 1)
            ),
        }
        mixed = [0.0] * self.dim
        for key, features in groups.items():
            for i, value in enumerate(_hashed(features, self.dim)):
                mixed[i] += self.WEIGHTS[key] * value
        norm = math.sqrt(sum(v * v for v in mixed))
        return [v / norm for v in mixed] if norm else mixed

    async def embed(self, texts: list[str]) -> list[list[float]]:
        # About 5 ms per 350-token chunk: a batch goes to a thread to keep the loop responsive.
        if len(texts) <= 4:
            return [self.embed_one(text) for text in texts]
        return await asyncio.to_thread(lambda: [self.embed_one(text) for text in texts])


