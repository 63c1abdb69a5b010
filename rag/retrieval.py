"""The knowledge base: ingest documents, hybrid search, reindex after a model change.

Search is hybrid by default: the nearest chunks by embedding and the best full-text
matches are fused by weighted reciprocal rank fusion (RRF, k=60). RRF needs no score
calibration between the two lists, and each half covers the other's blind spot: full text
finds exact names, codes and rare words; vectors find paraphrases. How much each half
counts, or whether only one runs, is a `Fusion` (STUDYHALL_RETRIEVAL_*): fusing full text
into a strong embedder's ranking can make it worse (QuackIR on BEIR), so the weights are
chosen by measuring with `studyhall eval` on the operator's own material (docs/tutor.md).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from uuid import UUID

from rag.chunking import DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS, Chunk, TooManyChunks, chunk_text
from rag.embeddings import Embedder, cosine, embedder_for_name
from rag.extract import (
    DocumentLimits,
    DocumentTooLarge,
    EmptyDocument,
    Extracted,
    content_hash,
    extract,
    normalize_text,
)
from storage import documents as store
from storage.db import Database

log = logging.getLogger(__name__)

RRF_K = 60
# How often `reindex` embeds chunks added while it ran before it gives up switching.
SWITCH_ATTEMPTS = 20
RETRIEVAL_MODES = ("hybrid", "vector", "text")
# How long an instance trusts its last read of the active model. Every search used to read
# it (a round trip and a pool checkout per question, each question of `studyhall eval`
# too). A switch made by `studyhall reindex` on another instance still takes effect at
# once: it moves every chunk to the new model in one transaction, so a vector query under
# the remembered model finds nothing, and then search reads the model again and retries
# (`search_scored`). The TTL bounds what that cannot see (a new document embedded by the
# old model, which ingestion reads from here too; inserts read the model under a lock, so
# nothing is stored under the wrong one: storage/documents.py `insert_document`).
ACTIVE_MODEL_TTL_S = 2.0
TEXT_BUDGET_MS = 20


@dataclass(frozen=True)
class Fusion:
    """Which retrievers run and how their rankings are fused.

    `hybrid` runs both queries and adds `weight / (rrf_k + rank)` from each list; `vector`
    or `text` runs that query alone (its own order, no fusion). The default weights were
    picked with `studyhall eval` on bench/evalsets for the `hashing` embedder (README,
    "Measuring retrieval"); re-measure after changing the embedder.
    """

    mode: str = "hybrid"
    vector_weight: float = 1.0
    text_weight: float = 1.0
    rrf_k: int = RRF_K
    # Hybrid mode: the full-text query's time budget in ms (0: none). Past it the server
    # cancels it and that question is ranked by vectors alone, logged and counted
    # (`KnowledgeBase.text_over_budget`). Full-text cost grows with the rows matching every
    # word of the question; at 100k chunks a few questions of common words took several
    # times the median (docs/performance.md). Text-only mode has no budget: nothing to fall back to.
    text_budget_ms: int = TEXT_BUDGET_MS

    def __post_init__(self) -> None:
        if self.mode not in RETRIEVAL_MODES:
            raise ValueError(f"retrieval mode must be one of {', '.join(RETRIEVAL_MODES)}, got {self.mode!r}")
        if self.vector_weight < 0 or self.text_weight < 0 or self.vector_weight + self.text_weight <= 0:
            raise ValueError("fusion weights must be >= 0 and not both 0")
        if self.rrf_k < 1:
            raise ValueError("rrf_k must be at least 1")
        if self.text_budget_ms < 0:
            raise ValueError("text_budget_ms must be >= 0")

    @property
    def label(self) -> str:
        """How reports name it: `vector`, `text`, or `hybrid 1:0.5` (vector:text weights)."""
        if self.mode != "hybrid":
            return self.mode
        return f"hybrid {self.vector_weight:g}:{self.text_weight:g}"

    @property
    def uses_vector(self) -> bool:
        return self.mode == "vector" or (self.mode == "hybrid" and self.vector_weight > 0)

    @property
    def uses_text(self) -> bool:
        return self.mode == "text" or (self.mode == "hybrid" and self.text_weight > 0)


@dataclass(frozen=True)
class SearchResult:
    """One chunk of the fused ranking.

    `score` is the RRF score (rank-based, comparable only within one search). `similarity`
    (cosine to the query, None if the chunk was not among the vector candidates) and
    `text_rank` (ts_rank_cd, None if no query word matched) let callers judge absolute
    relevance, e.g. to decide that nothing relevant was found.
    """

    chunk_id: UUID
    document_id: UUID
    title: str
    content: str
    score: float
    heading_path: list[str] = field(default_factory=list)
    similarity: float | None = None
    text_rank: float | None = None
    source: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "chunk_id": str(self.chunk_id),
            "document_id": str(self.document_id),
            "title": self.title,
            "content": self.content,
            "score": self.score,
            "heading_path": self.heading_path,
            "similarity": self.similarity,
            "text_rank": self.text_rank,
            "source": self.source,
        }


def embedding_input(heading_path: list[str], content: str) -> str:
    """What gets embedded: the heading path gives a chunk the context of its section."""
    return " > ".join(heading_path) + "\n\n" + content if heading_path else content


def fuse(
    vector_hits: list[store.ChunkHit], text_hits: list[store.ChunkHit], k: int, fusion: Fusion | None = None
) -> list[SearchResult]:
    """Weighted reciprocal rank fusion: score = sum over lists of weight / (rrf_k + rank).

    With one list empty (a single-retriever mode, or nothing matched on one side) this is
    that list's own order. A list with weight 0 adds nothing to the order but still fills
    `similarity` / `text_rank`."""
    fusion = fusion or Fusion()
    scores: dict[UUID, float] = {}
    hits: dict[UUID, store.ChunkHit] = {}
    similarity: dict[UUID, float] = {}
    text_rank: dict[UUID, float] = {}
    sides = ((vector_hits, similarity, fusion.vector_weight), (text_hits, text_rank, fusion.text_weight))
    for ranked, side, weight in sides:
        for rank, hit in enumerate(ranked, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + weight / (fusion.rrf_k + rank)
            hits.setdefault(hit.chunk_id, hit)
            side[hit.chunk_id] = hit.score
    # Ties (e.g. a zero-weight list's hits) go to the higher cosine, then the better text rank.
    order = sorted(scores, key=lambda cid: (-scores[cid], -similarity.get(cid, -1.0), -text_rank.get(cid, -1.0),
                                            str(cid)))
    return [
        SearchResult(
            chunk_id=cid, document_id=hits[cid].document_id, title=hits[cid].title,
            content=hits[cid].content, score=scores[cid], heading_path=hits[cid].heading_path,
            similarity=similarity.get(cid), text_rank=text_rank.get(cid), source=hits[cid].source,
        )
        for cid in order[:k]
    ]


@dataclass(frozen=True)
class PreparedFile:
    """A file read, extracted and chunked, ready to embed and store (`KnowledgeBase.prepare_file`)."""

    path: Path
    extracted: Extracted
    chunks: list[Chunk]


@dataclass(frozen=True)
class EmbeddedDocument:
    """A document chunked and embedded, not yet stored (`KnowledgeBase.insert_embedded`)."""

    title: str
    text: str
    digest: str
    chunks: list[store.NewChunk]
    source: str | None
    language: str | None
    course: str | None
    created_by: UUID | None


@dataclass(frozen=True)
class ScoredSearch:
    """A search's hits and the embedding model that scored them (None: no vector search ran,
    e.g. full-text mode or a model that cannot run here)."""

    hits: list[SearchResult]
    model: str | None


async def _with_similarity(hits: list[SearchResult], embedder: Embedder, query: list[float]) -> list[SearchResult]:
    """Every hit with its cosine to the query: those found by full text alone (no vector
    candidate) are embedded here the way ingestion embedded them."""
    missing = [h for h in hits if h.similarity is None]
    if not missing:
        return hits
    vectors = await embedder.embed([embedding_input(h.heading_path, h.content) for h in missing])
    found = dict(zip((h.chunk_id for h in missing), vectors, strict=True))
    return [replace(h, similarity=cosine(query, found[h.chunk_id])) if h.similarity is None else h for h in hits]


class KnowledgeBase:
    """Documents and chunks in PostgreSQL, searched with the vectors of the active model.

    `embedder` is the configured model. The active one, whose vectors search uses, is
    recorded in the database (storage/documents.py `embedding_state`): after a change of
    configuration it stays the previous model, rebuilt by `resolve` from its name, until
    `reindex` has embedded every chunk with the new one and switches, for every instance
    at once. Meanwhile new documents are embedded by both.
    """

    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
        embed_batch: int = 64,
        limits: DocumentLimits | None = None,
        resolve: Callable[[str], Embedder | None] = embedder_for_name,
        fusion: Fusion | None = None,
        active_model_ttl: float = ACTIVE_MODEL_TTL_S,
    ) -> None:
        self.db = db
        self.fusion = fusion or Fusion()
        self._resolve = resolve
        self._embedders: dict[str, Embedder | None] = {embedder.name: embedder}
        self.limits = limits or DocumentLimits()
        self.embedder = embedder
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.embed_batch = embed_batch
        self.active_model_ttl = active_model_ttl
        self._active: tuple[store.ActiveModel, float] | None = None  # and when it was read
        self.text_over_budget = 0  # hybrid searches whose full-text query was cancelled

    async def _embed(self, texts: list[str], embedder: Embedder | None = None) -> list[list[float]]:
        embedder = embedder or self.embedder
        vectors: list[list[float]] = []
        for first in range(0, len(texts), self.embed_batch):
            vectors.extend(await embedder.embed(texts[first:first + self.embed_batch]))
        return vectors

    async def active_model(self, *, fresh: bool = False) -> store.ActiveModel:
        """The model search uses. A knowledge base that never had one takes the configured model.

        Read from the database at most every `active_model_ttl` seconds (another instance
        may switch it: see ACTIVE_MODEL_TTL_S); `fresh` reads it now, for decisions that
        must not act on a stale value (reindex, startup checks)."""
        now = time.monotonic()
        if not fresh and self._active is not None and now - self._active[1] < self.active_model_ttl:
            return self._active[0]
        async with self.db.connection() as conn:
            active = await store.get_active_model(conn)
            if active is None:
                active = await store.claim_active_model(conn, self.embedder.name, self.embedder.dim)
        self._active = (active, now)
        return active

    async def embedder_for(self, model: str) -> Embedder | None:
        """The embedder that made `model`'s vectors (None: it cannot run here). Built once
        per process, in a thread: loading a neural model takes about a second."""
        if model not in self._embedders:
            built = await asyncio.to_thread(self._resolve, model)
            if built is not None and built.name != model:
                built = None
            if built is None:
                log.warning("the active embedding model %s cannot run here: search uses full text "
                            "only until `studyhall reindex` switches to %s", model, self.embedder.name)
            self._embedders[model] = built
        return self._embedders[model]

    async def ingest_text(
        self,
        title: str | None,
        text: str,
        *,
        source: str | None = None,
        language: str | None = None,
        course: str | None = None,
        created_by: UUID | None = None,
    ) -> tuple[store.DocumentRow, bool]:
        """Store a document; `(existing, False)` if the same normalised text is stored already.

        `DocumentTooLarge` past the text or chunk caps (`self.limits`)."""
        self.limits.check_text(len(text))
        text = normalize_text(text)
        return await self._store(title, text, content_hash(text), source=source, language=language,
                                 course=course, created_by=created_by)

    async def _store(
        self,
        title: str | None,
        text: str,
        digest: str,
        *,
        source: str | None,
        language: str | None,
        course: str | None,
        created_by: UUID | None,
        chunks: list[Chunk] | None = None,
    ) -> tuple[store.DocumentRow, bool]:
        """Chunk, embed and insert text that is normalised already, with its hash: an
        extracted file arrives so (`Extracted`), and hashing a large text twice is waste.
        `chunks`: made already (`prepare_file`)."""
        ready = await self._embed_document(title, text, digest, source=source, language=language, course=course,
                                           created_by=created_by, chunks=chunks)
        if isinstance(ready, store.DocumentRow):
            return ready, False
        return await self.insert_embedded(ready)

    async def _embed_document(
        self,
        title: str | None,
        text: str,
        digest: str,
        *,
        source: str | None,
        language: str | None,
        course: str | None,
        created_by: UUID | None,
        chunks: list[Chunk] | None = None,
    ) -> EmbeddedDocument | store.DocumentRow:
        """Everything of `_store` but the insert: the stored document if the text is there
        already, else the document with its chunks' vectors, for `insert_embedded`."""
        if not text:
            raise EmptyDocument("the document has no text")
        async with self.db.connection() as conn:
            existing = await store.get_document_by_hash(conn, digest)
        if existing is not None:
            return existing
        if chunks is None:
            # Chunking a long document takes about a second per MB of text: keep it off the loop.
            chunks = await asyncio.to_thread(self._chunk, text)
        # The active model's vectors serve search now; during a change of model the
        # configured one's wait beside them, so `reindex` need not embed this document again.
        active = await self.active_model()
        embedders = [e for e in (await self.embedder_for(active.model), self.embedder) if e is not None]
        inputs = [embedding_input(c.heading_path, c.content) for c in chunks]
        by_model = {e.name: await self._embed(inputs, e) for e in {e.name: e for e in embedders}.values()}
        new_chunks = [
            store.NewChunk(c.index, c.content, c.start_char, c.end_char, c.token_count, c.heading_path,
                           {model: vectors[i] for model, vectors in by_model.items()})
            for i, c in enumerate(chunks)
        ]
        return EmbeddedDocument(
            title=(title or "").strip() or text.split("\n", 1)[0][:120], text=text, digest=digest,
            chunks=new_chunks, source=source, language=language, course=course, created_by=created_by,
        )

    async def insert_embedded(self, ready: EmbeddedDocument) -> tuple[store.DocumentRow, bool]:
        """Insert an `embed_prepared` result; `(existing, False)` if the same text was stored
        meanwhile (the insert is the arbiter: `ON CONFLICT` on the content hash)."""
        async with self.db.transaction() as conn:
            return await store.insert_document(
                conn, title=ready.title, content=ready.text, content_hash=ready.digest, chunks=ready.chunks,
                fallback_model=self.embedder.name, source=ready.source, language=ready.language,
                course=ready.course, created_by=ready.created_by,
            )

    def _chunk(self, text: str) -> list[Chunk]:
        try:
            return chunk_text(text, self.max_tokens, self.overlap_tokens, self.limits.max_chunks)
        except TooManyChunks as exc:
            raise DocumentTooLarge(str(exc)) from None

    def _prepare(self, path: Path) -> PreparedFile:
        extracted = extract(path.read_bytes(), path.name, self.limits)
        self.limits.check_text(len(extracted.text))
        return PreparedFile(path, extracted, self._chunk(extracted.text) if extracted.text else [])

    async def prepare_file(self, path: Path) -> PreparedFile:
        """Read, extract and chunk a file in a worker thread: the CPU work of ingestion other
        than embedding, which `ingest_paths` runs for the next file while this one embeds."""
        return await asyncio.to_thread(self._prepare, path)

    async def embed_prepared(
        self,
        prepared: PreparedFile,
        *,
        source: str | None = None,
        course: str | None = None,
        created_by: UUID | None = None,
    ) -> EmbeddedDocument | store.DocumentRow:
        """A `prepare_file` result embedded (`_store` without the insert): the stored document
        if this text is stored already, else the document ready for `insert_embedded`. Split
        so that `ingest_paths` inserts one file while it embeds the next."""
        extracted = prepared.extracted
        return await self._embed_document(
            extracted.title, extracted.text, extracted.content_hash, source=source or str(prepared.path),
            language=None, course=course, created_by=created_by, chunks=prepared.chunks,
        )

    async def ingest_file(
        self,
        data: bytes | str | Path,
        filename: str | None = None,
        *,
        title: str | None = None,
        source: str | None = None,
        language: str | None = None,
        course: str | None = None,
        created_by: UUID | None = None,
    ) -> tuple[store.DocumentRow, bool]:
        """Extract a .txt/.md/.html/.pdf (a path, or bytes plus its file name) and store it."""
        if isinstance(data, (str, Path)):
            path = Path(data)
            data, filename = await asyncio.to_thread(path.read_bytes), filename or path.name
            source = source or str(path)
        if not filename:
            raise ValueError("filename is needed to tell the file type of raw bytes")
        extracted = await asyncio.to_thread(extract, data, filename, self.limits)  # pypdf can be slow
        self.limits.check_text(len(extracted.text))
        # Extraction normalised and hashed the text: stored as it is (normalising is idempotent,
        # tests/test_extract.py), not normalised and hashed again.
        return await self._store(
            title or extracted.title, extracted.text, extracted.content_hash, source=source or filename,
            language=language, course=course, created_by=created_by,
        )

    async def search(
        self, q: str, k: int = 5, course: str | None = None, *, fusion: Fusion | None = None
    ) -> list[SearchResult]:
        """The best `k` chunks by the configured fusion (`fusion` overrides it: `studyhall
        eval` compares retrievers through this same path)."""
        return (await self.search_scored(q, k, course, fusion=fusion, score_all=False)).hits

    async def search_scored(
        self, q: str, k: int = 5, course: str | None = None, *, fusion: Fusion | None = None,
        score_all: bool = True,
    ) -> ScoredSearch:
        """`search`, and the model whose vectors ranked the hits (during a change of model,
        still the previous one: `active_model`). With `score_all`, a hit found by full text
        alone gets its cosine to the question too, by that model and with the query vector
        the search already made, so the tutor judges every hit on one scale."""
        if not q.strip() or k <= 0:
            return ScoredSearch([], None)
        fusion = fusion or self.fusion
        used: dict[str, Any] = {}
        # Single-retriever modes need only k; fused lists need room for the other side's picks.
        candidates = max(4 * k, 20) if fusion.mode == "hybrid" else k

        # The two queries at the same time on two connections: the full-text one from the
        # start, the vector one as soon as the query is embedded (a network call with a
        # remote embedder; no connection is held while waiting for it). Measured on 100k
        # chunks (2 cores, PostgreSQL's working set in shared buffers, three passes of 200
        # questions): at once p95 9.7-11.6 ms, one after the other 13.3-18.3 ms. With
        # PostgreSQL's default 128MB it gained little or lost (17.3-23.3 vs 21.6-22.1 ms;
        # an earlier run 27.6 vs 18.7): two queries copying pages in from the OS cache
        # slow each other down.
        async def nearest() -> list[store.ChunkHit]:
            if not fusion.uses_vector:
                return []
            active = await self.active_model()
            for attempt in range(2):
                embedder = await self.embedder_for(active.model)
                hits: list[store.ChunkHit] = []
                if embedder is not None:
                    [query_vector] = await embedder.embed([q])
                    used.update(embedder=embedder, vector=query_vector)
                    if not any(query_vector):  # an all-zero query (only stopwords) has no direction
                        return []
                    async with self.db.connection() as conn:
                        hits = await store.search_vector(
                            conn, query_vector, model=active.model, dim=active.dim, k=candidates, course=course,
                        )
                if hits or attempt:
                    return hits
                # Nothing under the model this instance remembers: a switch elsewhere empties
                # the old model's rows at once, so look again now rather than after the TTL.
                if (current := await self.active_model(fresh=True)) == active:
                    return hits
                active = current
                used.clear()
            return []

        vector_search = asyncio.ensure_future(nearest())
        try:
            text_hits: list[store.ChunkHit] = []
            if fusion.uses_text:
                text_hits = await self._text_hits(q, candidates, course, fusion)
            vector_hits = await vector_search
        finally:
            if not vector_search.done():
                vector_search.cancel()
        hits = fuse(vector_hits, text_hits, k, fusion)
        embedder: Embedder | None = used.get("embedder")
        if score_all and embedder is not None:
            hits = await _with_similarity(hits, embedder, used["vector"])
        return ScoredSearch(hits, embedder.name if embedder is not None else None)

    async def _text_hits(self, q: str, k: int, course: str | None, fusion: Fusion) -> list[store.ChunkHit]:
        """The full-text ranking; in hybrid mode within `fusion.text_budget_ms`, past which
        the question is left to the vector ranking (logged, counted)."""
        budget = fusion.text_budget_ms if fusion.mode == "hybrid" and fusion.uses_vector else 0
        async with self.db.connection() as conn:
            try:
                return await store.search_text(conn, q, k=k, course=course, budget_ms=budget)
            except store.TextSearchOverBudget:
                self.text_over_budget += 1
                log.warning("full-text search over its budget: this question is ranked by vectors alone",
                            extra={"budget_ms": budget, "over_budget_total": self.text_over_budget,
                                   "query_chars": len(q)})
                return []

    async def ensure_index(self) -> str:
        """Create the HNSW indexes of the active and the configured model if missing (cheap
        when they exist); returns the configured model's index name."""
        active = await self.active_model(fresh=True)
        async with self.db.connection() as conn:
            if active.model != self.embedder.name:
                await store.ensure_vector_index(conn, active.model, active.dim)
            return await store.ensure_vector_index(conn, self.embedder.name, self.embedder.dim)

    async def pending_reindex(self) -> int:
        """Chunks without a vector of the configured model (reindex embeds them)."""
        async with self.db.connection() as conn:
            return await store.count_chunks_to_embed(conn, self.embedder.name)

    async def reindex(self, progress: Callable[[int, int], None] | None = None, batch: int = 128) -> int:
        """Embed every chunk the configured model has no vector for, then make it the active
        model; returns how many chunks were embedded.

        Search keeps using the previous model's vectors until the switch, one transaction
        (storage/documents.py `switch_active_model`). `progress(done, total)` is called
        after each batch. Each batch commits on its own, so an interrupted reindex resumes
        where it stopped.
        """
        target = self.embedder
        total = await self.pending_reindex()
        done = 0
        for _ in range(SWITCH_ATTEMPTS):
            active = await self.active_model(fresh=True)
            in_place = active.model == target.name
            after: UUID | None = None
            while True:
                async with self.db.connection() as conn:
                    todo = await store.chunks_to_embed(conn, target.name, after=after, limit=batch)
                if not todo:
                    break
                after = todo[-1].id
                vectors = await self._embed([embedding_input(c.heading_path, c.content) for c in todo])
                pairs = [(c.id, v) for c, v in zip(todo, vectors, strict=True)]
                async with self.db.transaction() as conn:
                    if in_place:
                        await store.update_embeddings(conn, target.name, pairs)
                    else:
                        await store.stage_embeddings(conn, target.name, pairs)
                done += len(todo)
                if progress is not None:
                    progress(done, max(total, done))
            async with self.db.connection() as conn:
                # The index first, while the model has no rows in `chunks`: the switch fills it.
                await store.ensure_vector_index(conn, target.name, target.dim)
                if await store.switch_active_model(conn, target.name, target.dim) == 0:
                    self._active = (store.ActiveModel(target.name, target.dim), time.monotonic())
                    if not in_place:
                        log.info("embedding model switched", extra={"from": active.model, "to": target.name})
                    return done
        raise RuntimeError(f"chunks kept arriving without a {target.name} vector; run reindex again")

    async def delete(self, document_id: UUID) -> bool:
        async with self.db.transaction() as conn:
            return await store.delete_document(conn, document_id)

    async def get_document(self, document_id: UUID, *, with_content: bool = False) -> store.DocumentRow | None:
        async with self.db.connection() as conn:
            return await store.get_document(conn, document_id, with_content=with_content)

    async def list_documents(
        self, *, course: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[store.DocumentRow]:
        async with self.db.connection() as conn:
            return await store.list_documents(conn, course=course, limit=limit, offset=offset)
