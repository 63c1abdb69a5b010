"""The interface every embedder implements, and the error for one that cannot run here."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of `dim` floats; `name` identifies model and version.

    The name is stored with every vector, so a change of model is detected and search
    only ever compares vectors of one model.
    """

    name: str
    dim: int

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


class EmbedderUnavailable(RuntimeError):
    """The configured embedder cannot run here (missing extra, bad configuration)."""


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0 when either is all zeros)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
