"""SQL for the knowledge base: documents, chunks, vector and full-text search.

Vectors are sent as pgvector text literals through a `$n::text::vector` cast, so these
functions work whether or not the connection has pgvector's binary codec registered.

`chunks.embedding` has no fixed dimension (the embedding model can change), so each model
gets a partial HNSW index over `embedding::vector(dim)`. A query only uses that index when
it repeats the same cast and the same `embedding_model = '<literal>'` predicate; the model
name and dimension are therefore written into the SQL as literals, never as parameters.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

# Full-text search configuration; must match the generated `chunks.tsv` column (0003).
TS_CONFIG = "english"
# HNSW graph and search breadth, measured on 100k chunks (bench/retrieval_bench.py; the
# exploration behind these numbers is in docs/performance.md): with pgvector's default build
# (m 16, ef_construction 64) recall@10 against exact search needed ef_search 400 to reach
# 0.95 (vector query p95 15 ms); a graph built with ef_construction 200 reaches 0.953 at
# ef_search 100 (7 ms) and 0.990 at 200 (10 ms). m 32 was no better for its cost (0.96 at
# 100, a build twice as long). The build takes about twice as long as the default's
# (73 s against 32 s for 100k chunks, with maintenance_work_mem 1GB).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
EF_SEARCH_MIN = 200
# An index build over millions of chunks can take hours: no statement timeout for it.
INDEX_BUILD_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class DocumentRow:
    """A stored document, without its text unless asked for."""

    id: UUID
    title: str
    source: str | None
    language: str | None
    course: str | None
    content_hash: str
    created_by: UUID | None
    created_at: datetime
    chunk_count: int
    content: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (ids as strings, ISO time), as the HTTP API returns it."""
        out: dict[str, Any] = {
            "id": str(self.id),
            "title": self.title,
            "source": self.source,
            "language": self.language,
            "course": self.course,
            "content_hash": self.content_hash,
            "created_by": str(self.created_by) if self.created_by else None,
            "created_at": self.created_at.isoformat(),
            "chunk_count": self.chunk_count,
        }
        if self.content is not None:
            out["content"] = self.content
        return out


@dataclass(frozen=True)
class NewChunk:
    """A chunk to insert, with its embeddings already computed: one per model name (the
    active model's, and during a model change also the incoming model's)."""

    chunk_index: int
    content: str
    start_char: int
    end_char: int
    token_count: int
    heading_path: list[str]
    embeddings: Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class ActiveModel:
    """The embedding model whose vectors search uses (table `embedding_state`, 0017)."""

    model: str
    dim: int


@dataclass(frozen=True)
class ChunkHit:
    """One chunk found by a search, with that search's own score (higher is better)."""

    chunk_id: UUID
    document_id: UUID
    title: str
    content: str
    heading_path: list[str]
    score: float
    source: str | None = None  # the document's source (a URL or a citation), for links


@dataclass(frozen=True)
class ChunkToEmbed:
    id: UUID
    content: str
    heading_path: list[str]


def vector_literal(values: Sequence[float]) -> str:
    """pgvector's text form, e.g. `[0.1,-0.2]`."""
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def vector_index_name(model: str) -> str:
    """Index name for a model's partial HNSW index, e.g. `chunks_hnsw_hashing_384_v1`."""
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")
    if len(slug) > 40 or slug != model.lower().replace("-", "_"):
        slug = f"{slug[:40]}_{hashlib.sha1(model.encode()).hexdigest()[:8]}"
    return f"chunks_hnsw_{slug}"


def _check_dim(dim: int) -> int:
    if not isinstance(dim, int) or not 0 < dim <= 16000:
        raise ValueError(f"bad embedding dimension {dim!r}")
    return dim


_DOC_COLUMNS = """d.id, d.title, d.source, d.language, d.course, d.content_hash, d.created_by,
    d.created_at, (SELECT count(*) FROM chunks c WHERE c.document_id = d.id) AS chunk_count"""


def _document(row: asyncpg.Record, with_content: bool = False) -> DocumentRow:
    return DocumentRow(
        id=row["id"], title=row["title"], source=row["source"], language=row["language"],
        course=row["course"], content_hash=row["content_hash"], created_by=row["created_by"],
        created_at=row["created_at"], chunk_count=row["chunk_count"],
        content=row["content"] if with_content else None,
    )


async def get_document_by_hash(conn: asyncpg.Connection, content_hash: str) -> DocumentRow | None:
    row = await conn.fetchrow(f"SELECT {_DOC_COLUMNS} FROM documents d WHERE d.content_hash = $1", content_hash)
    return _document(row) if row else None


async def insert_document(
    conn: asyncpg.Connection,
    *,
    title: str,
    content: str,
    content_hash: str,
    chunks: Sequence[NewChunk],
    fallback_model: str,
    source: str | None = None,
    language: str | None = None,
    course: str | None = None,
    created_by: UUID | None = None,
) -> tuple[DocumentRow, bool]:
    """Insert a document and its chunks atomically; `(existing, False)` if the hash exists.

    Each chunk's vector of the active model goes to `chunks.embedding`, vectors of other
    models to `chunk_vectors` (a model change in progress). The active model is read under
    a share lock, so a switch (`switch_active_model`) waits for this insert or this insert
    for the switch: no chunk ends up with only the old model's vector after a switch. When
    the active model's vector was not computed, `fallback_model`'s goes to `chunks` (it
    then waits for `studyhall reindex`, as it would have before 0017).
    """
    async with conn.transaction():
        state = await conn.fetchrow("SELECT active_model FROM embedding_state FOR SHARE")
        active = state["active_model"] if state else None
        row = await conn.fetchrow(
            """INSERT INTO documents (title, source, language, course, content_hash, content, created_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (content_hash) DO NOTHING
               RETURNING id""",
            title, source, language, course, content_hash, content, created_by,
        )
        if row is None:
            existing = await get_document_by_hash(conn, content_hash)
            assert existing is not None
            return existing, False
        primary: str = active if active is not None and chunks and active in chunks[0].embeddings else fallback_model
        ids = [uuid4() for _ in chunks]
        await conn.executemany(
            """INSERT INTO chunks (id, document_id, chunk_index, content, start_char, end_char, token_count,
                                   heading_path, course, embedding_model, embedding)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::vector)""",
            [
                (chunk_id, row["id"], c.chunk_index, c.content, c.start_char, c.end_char, c.token_count,
                 list(c.heading_path), course, primary, vector_literal(c.embeddings[primary]))
                for chunk_id, c in zip(ids, chunks, strict=True)
            ],
        )
        others = [
            (model, chunk_id, vector_literal(vec))
            for chunk_id, c in zip(ids, chunks, strict=True) for model, vec in c.embeddings.items() if model != primary
        ]
        if others:
            await conn.executemany(
                "INSERT INTO chunk_vectors (model, chunk_id, embedding) VALUES ($1, $2, $3::text::vector)", others
            )
        document = await get_document(conn, row["id"])
        assert document is not None
        return document, True


async def get_document(
    conn: asyncpg.Connection, document_id: UUID, *, with_content: bool = False
) -> DocumentRow | None:
    extra = ", d.content" if with_content else ""
    row = await conn.fetchrow(f"SELECT {_DOC_COLUMNS}{extra} FROM documents d WHERE d.id = $1", document_id)
    return _document(row, with_content) if row else None


async def list_documents(
    conn: asyncpg.Connection, *, course: str | None = None, limit: int = 100, offset: int = 0
) -> list[DocumentRow]:
    """Newest first; `course` keeps only that course's documents."""
    rows = await conn.fetch(
        f"""SELECT {_DOC_COLUMNS} FROM documents d
            WHERE ($1::text IS NULL OR d.course = $1)
            ORDER BY d.created_at DESC, d.id LIMIT $2 OFFSET $3""",
        course, limit, offset,
    )
    return [_document(r) for r in rows]


async def delete_document(conn: asyncpg.Connection, document_id: UUID) -> bool:
    """Delete a document (its chunks go with it); False if there was none."""
    return await conn.fetchval("DELETE FROM documents WHERE id = $1 RETURNING true", document_id) is not None


async def set_document_source(conn: asyncpg.Connection, document_id: UUID, source: str) -> bool:
    """Point a stored document at a new source (a public link); False if it already had it."""
    return await conn.fetchval(
        "UPDATE documents SET source = $2 WHERE id = $1 AND source IS DISTINCT FROM $2 RETURNING true",
        document_id, source,
    ) is not None


async def ensure_vector_index(conn: asyncpg.Connection, model: str, dim: int) -> str:
    """Create the partial HNSW index for `model` if missing; returns its name.

    Building takes a write lock on `chunks` for the duration: call it after a reindex,
    not on every request.
    """
    name = vector_index_name(model)
    await conn.execute(
        f"""CREATE INDEX IF NOT EXISTS {name} ON chunks
            USING hnsw ((embedding::vector({_check_dim(dim)})) vector_cosine_ops)
            WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})
            WHERE embedding_model = {_sql_literal(model)}""",
        timeout=INDEX_BUILD_TIMEOUT_S,
    )
    return name


def vector_search_sql(model: str, dim: int) -> str:
    """The nearest-neighbour query, shaped to match the model's partial HNSW index."""
    vec = f"embedding::vector({_check_dim(dim)})"
    return f"""
        SELECT c.id, c.document_id, d.title, d.source, c.content, c.heading_path, c.distance
        FROM (
            SELECT id, document_id, content, heading_path,
                   {vec} <=> $1::text::vector({dim}) AS distance
            FROM chunks
            WHERE embedding_model = {_sql_literal(model)}
              AND ($3::text IS NULL OR course = $3 OR course IS NULL)
            ORDER BY {vec} <=> $1::text::vector({dim})
            LIMIT $2
        ) c
        JOIN documents d ON d.id = c.document_id
        ORDER BY c.distance"""


async def search_vector(
    conn: asyncpg.Connection,
    embedding: Sequence[float],
    *,
    model: str,
    dim: int,
    k: int = 20,
    course: str | None = None,
) -> list[ChunkHit]:
    """The `k` chunks nearest to `embedding` (cosine), score = cosine similarity.

    With a course filter, HNSW iterative scan (pgvector >= 0.8) keeps walking the graph
    until `k` matching rows are found instead of returning fewer.
    """
    if len(embedding) != dim:
        raise ValueError(f"query embedding has {len(embedding)} dims, model {model} has {dim}")
    async with conn.transaction():
        # HNSW returns at most ef_search rows; iterative scan exists from pgvector 0.8 on.
        # With a large ef_search pgvector's cost estimate makes a sequential (exact) scan
        # look cheaper on small tables (10k chunks: 40 ms instead of a few): seq scans are
        # discouraged for this query only. Without an index for the model, it still runs.
        await conn.execute(
            """SELECT set_config('hnsw.ef_search', $1, true), set_config('enable_seqscan', 'off', true),
                      CASE WHEN $2 AND string_to_array(extversion, '.')::int[] >= '{0,8}'
                           THEN set_config('hnsw.iterative_scan', 'relaxed_order', true) END
               FROM pg_extension WHERE extname = 'vector'""",
            str(min(max(EF_SEARCH_MIN, k), 1000)), course is not None,
        )
        rows = await conn.fetch(vector_search_sql(model, dim), vector_literal(embedding), k, course)
    return [
        ChunkHit(r["id"], r["document_id"], r["title"], r["content"], list(r["heading_path"]), 1.0 - r["distance"], r["source"])
        for r in rows
    ]


class TextSearchOverBudget(Exception):
    """The full-text query ran past its time budget and was cancelled by the server."""


TEXT_SEARCH_SQL = f"""WITH q AS (SELECT plainto_tsquery('{TS_CONFIG}', $1) AS query)
    SELECT c.id, c.document_id, d.title, d.source, c.content, c.heading_path,
           ts_rank_cd(c.tsv, q.query) AS rank
    FROM q, chunks c JOIN documents d ON d.id = c.document_id
    WHERE c.tsv @@ q.query
      AND ($3::text IS NULL OR c.course = $3 OR c.course IS NULL)
    ORDER BY rank DESC, c.id
    LIMIT $2"""


async def search_text(
    conn: asyncpg.Connection, query: str, *, k: int = 20, course: str | None = None, budget_ms: int = 0
) -> list[ChunkHit]:
    """Full-text top `k`: chunks with every query word (AND), ranked by `ts_rank_cd`.

    AND, not "any word" (OR): measured on PostgreSQL's manual (bench/retrieval_bench.py),
    OR ranked chunks full of common words first (hybrid recall@5 0.56 vs 0.84 with AND)
    and had to rank most of the table (p95 1.4 s at 100k chunks vs 45 ms). A question
    whose words are not all in one chunk is left to the vector half of hybrid search.
    `ts_rank_cd` (cover density), not the cheaper `ts_rank`: with ts_rank hybrid recall@5
    fell from 0.86 to 0.84 and MRR@10 from 0.720 to 0.687 on the same bench; ranking only a
    shortlist chosen by ts_rank was faster but changed the top 5 of one question in seven at
    100k chunks (docs/performance.md), so every match is still ranked.

    `budget_ms` > 0: the server cancels the query after that long (`statement_timeout`,
    local to its transaction) and `TextSearchOverBudget` is raised. Ranking costs per
    matching row, so the questions whose words are common in the corpus are the slow ones.
    """
    if budget_ms <= 0:
        rows = await conn.fetch(TEXT_SEARCH_SQL, query, k, course)
    else:
        rows = None
        try:
            async with conn.transaction():  # the timeout ends with it (two more round trips, ~0.2 ms)
                await conn.execute("SELECT set_config('statement_timeout', $1, true)", f"{int(budget_ms)}ms")
                rows = await conn.fetch(TEXT_SEARCH_SQL, query, k, course)
        except asyncpg.QueryCanceledError as exc:
            # A timeout that fires as the query ends is served at the next statement: the
            # COMMIT is cancelled (PostgreSQL then says "due to user request", its timeout
            # flag already reset). Seen at 100k chunks on a loaded machine; it escaped
            # as an internal error. The rows were read by then: they are the answer.
            if rows is None:
                raise TextSearchOverBudget(f"full-text query over {budget_ms} ms") from exc
    return [
        ChunkHit(r["id"], r["document_id"], r["title"], r["content"], list(r["heading_path"]), float(r["rank"]), r["source"])
        for r in rows
    ]


# ---- the active model and a change of model (0017) -------------------------------------

_LACKS_VECTOR = """NOT (c.embedding_model IS NOT DISTINCT FROM $1 AND c.embedding IS NOT NULL)
    AND NOT EXISTS (SELECT 1 FROM chunk_vectors v WHERE v.model = $1 AND v.chunk_id = c.id)"""


async def get_active_model(conn: asyncpg.Connection) -> ActiveModel | None:
    """The model search uses; None on an install that has not embedded anything yet."""
    row = await conn.fetchrow("SELECT active_model, active_dim FROM embedding_state")
    if row is None or row["active_model"] is None:
        return None
    return ActiveModel(row["active_model"], row["active_dim"])


async def claim_active_model(conn: asyncpg.Connection, model: str, dim: int) -> ActiveModel:
    """Record `model` as active unless one is already; returns the active one either way."""
    await conn.execute(
        """INSERT INTO embedding_state (id, active_model, active_dim, switched_at) VALUES (true, $1, $2, now())
           ON CONFLICT (id) DO UPDATE SET active_model = $1, active_dim = $2, switched_at = now()
           WHERE embedding_state.active_model IS NULL""",
        model, _check_dim(dim),
    )
    active = await get_active_model(conn)
    assert active is not None
    return active


async def chunks_to_embed(
    conn: asyncpg.Connection, model: str, *, after: UUID | None = None, limit: int = 256
) -> list[ChunkToEmbed]:
    """A batch of chunks with no vector from `model` (in `chunks` or `chunk_vectors`), in id
    order after `after` (keyset paging: a reindex of N chunks reads the table once)."""
    rows = await conn.fetch(
        f"""SELECT c.id, c.content, c.heading_path FROM chunks c
            WHERE {_LACKS_VECTOR} AND ($2::uuid IS NULL OR c.id > $2)
            ORDER BY c.id LIMIT $3""",
        model, after, limit,
    )
    return [ChunkToEmbed(r["id"], r["content"], list(r["heading_path"])) for r in rows]


async def count_chunks_to_embed(conn: asyncpg.Connection, model: str) -> int:
    """Chunks with no vector from `model` yet."""
    return await conn.fetchval(f"SELECT count(*) FROM chunks c WHERE {_LACKS_VECTOR}", model)


async def update_embeddings(
    conn: asyncpg.Connection, model: str, embeddings: Sequence[tuple[UUID, Sequence[float]]]
) -> None:
    """Store vectors of the active `model` in place (chunks left behind by another model)."""
    await conn.executemany(
        "UPDATE chunks SET embedding = $2::text::vector, embedding_model = $3 WHERE id = $1",
        [(chunk_id, vector_literal(vec), model) for chunk_id, vec in embeddings],
    )


async def stage_embeddings(
    conn: asyncpg.Connection, model: str, embeddings: Sequence[tuple[UUID, Sequence[float]]]
) -> None:
    """Keep vectors of an incoming `model` aside until `switch_active_model`; search does not see them."""
    await conn.executemany(
        """INSERT INTO chunk_vectors (model, chunk_id, embedding) VALUES ($1, $2, $3::text::vector)
           ON CONFLICT (model, chunk_id) DO UPDATE SET embedding = EXCLUDED.embedding""",
        [(model, chunk_id, vector_literal(vec)) for chunk_id, vec in embeddings],
    )


async def switch_active_model(conn: asyncpg.Connection, model: str, dim: int) -> int:
    """Make `model` the active one if every chunk has its vector; returns how many lack one
    (0: switched; otherwise nothing changed, embed those and call again).

    One transaction: the state row is locked first, so inserts (which read it FOR SHARE)
    wait and none slips in with only the old model's vector. Readers are never blocked:
    until commit they see the old model and its vectors, from commit on the new ones.
    The new model's partial HNSW index should exist before (`ensure_vector_index`, empty
    and quick to create then): the copy fills it, and search never runs without it.
    """
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM embedding_state FOR UPDATE")
        missing = await count_chunks_to_embed(conn, model)
        if missing:
            return int(missing)
        await conn.execute(
            """UPDATE chunks c SET embedding = v.embedding, embedding_model = v.model
               FROM chunk_vectors v WHERE v.model = $1 AND v.chunk_id = c.id""",
            model, timeout=INDEX_BUILD_TIMEOUT_S,
        )
        await conn.execute("DELETE FROM chunk_vectors WHERE model = $1", model)
        await conn.execute(
            "UPDATE embedding_state SET active_model = $1, active_dim = $2, switched_at = now()",
            model, _check_dim(dim),
        )
    return 0
