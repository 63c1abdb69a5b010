"""Embeddings from any OpenAI-compatible `/v1/embeddings` endpoint through `openai.AsyncOpenAI`."""
from __future__ import annotations

import os
from typing import Any

from rag.embeddings.base import EmbedderUnavailable
from rag.tokens import truncate_to_tokens

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


