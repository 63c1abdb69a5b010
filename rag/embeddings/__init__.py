"""Text embedders behind one small interface, chosen by configuration.

- `onnx` (default): all-MiniLM-L6-v2 on onnxruntime, offline, no torch (rag/embeddings/onnx.py).
- `hashing`: feature hashing, offline, no model; fast and weak (tiny installs, the tests).
- `openai`: any OpenAI-compatible `/v1/embeddings` endpoint through `openai.AsyncOpenAI`.
- `sentence-transformers`: a local model with torch (optional extra).

Every embedder has a `name` that is stored with each vector, so a change of model is
detected and `studyhall reindex` embeds everything with the new model before search
switches to it (rag/retrieval.py).
"""
from __future__ import annotations

import logging
import re
from typing import Any

from rag.embeddings.base import Embedder, EmbedderUnavailable, cosine
from rag.embeddings.hashing import STOPWORDS, HashingEmbedder
from rag.embeddings.onnx import DEFAULT_NAME as ONNX_DEFAULT_NAME
from rag.embeddings.onnx import OnnxEmbedder
from rag.embeddings.openai_api import OpenAIEmbedder
from rag.embeddings.torch_st import SentenceTransformerEmbedder

__all__ = [
    "EMBEDDER_KINDS",
    "ONNX_DEFAULT_NAME",
    "STOPWORDS",
    "Embedder",
    "EmbedderUnavailable",
    "HashingEmbedder",
    "OnnxEmbedder",
    "OpenAIEmbedder",
    "SentenceTransformerEmbedder",
    "cosine",
    "embedder_for_name",
    "make_embedder",
]

EMBEDDER_KINDS = ("onnx", "hashing", "openai", "sentence-transformers")


def make_embedder(kind: str = "hashing", **options: Any) -> Embedder:
    """Build the embedder named by configuration (`STUDYHALL_EMBEDDER` in the app; the
    app's default is `onnx`, see handlers/settings.py)."""
    if kind == "hashing":
        return HashingEmbedder(**options)
    if kind == "onnx":
        return OnnxEmbedder(**options)
    if kind == "openai":
        return OpenAIEmbedder(**options)
    if kind in ("sentence-transformers", "sentence_transformers", "local"):
        return SentenceTransformerEmbedder(**options)
    raise EmbedderUnavailable(f"unknown embedder {kind!r}; choose one of {', '.join(EMBEDDER_KINDS)}")


log = logging.getLogger(__name__)
_HASHING_NAME = re.compile(r"hashing-(\d+)-v1")


def embedder_for_name(name: str) -> Embedder | None:
    """Rebuild an embedder from the name stored with its vectors, if it needs no
    configuration: during a change of model, search keeps embedding queries with the
    previous model. None when it cannot be rebuilt here (a remote API, a local path)."""
    try:
        if match := _HASHING_NAME.fullmatch(name):
            return HashingEmbedder(int(match.group(1)))
        if name == ONNX_DEFAULT_NAME:
            return OnnxEmbedder()
        if name == "sentence-transformers:all-MiniLM-L6-v2":
            return SentenceTransformerEmbedder()
    except EmbedderUnavailable as exc:
        log.warning("cannot rebuild embedder %s: %s", name, exc)
    return None
