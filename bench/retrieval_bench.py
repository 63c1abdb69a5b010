"""Knowledge-base benchmark: retrieval quality per embedder on two documentation corpora,
query embedding latency, ingestion speed, search latency at 10k and 100k chunks, and HNSW
recall against exact search.

    apt-get install postgresql-doc-15 python3.11-doc   # the corpora (HTML manuals)
    .venv/bin/python bench/retrieval_bench.py [--corpus postgres|python] [--docs DIR]
        [--pages N] [--embedders onnx,hashing,sentence-transformers] [--sizes 10000,100000]
        [--queries 200] [--skip-scale] [--shared-buffers SIZE]
        [--scale-corpus distinct|synthetic] [--corpus-dir /tmp/studyhall-corpus] [--keep-dir DIR] [--passes N]
    .venv/bin/python bench/corpus.py          # once: the distinct 100k corpus and its vectors (cached)

Starts its own embedded PostgreSQL (tests/services.py), so it needs nothing running. It is
configured as `studyhall serve` configures its embedded server (storage/embedded.py:
shared_buffers a quarter of memory, 128MB-4GB) unless `--shared-buffers` says otherwise
(`--shared-buffers 128MB` is PostgreSQL's own default); the value is printed first.

Every embedder in `--embedders` runs in the same process one after the other on the same
pages and questions, so their figures compare within one run (2 shared cores: absolute
times vary with the machine's load, ratios much less). `onnx` is the default embedder
(all-MiniLM-L6-v2 int8 on onnxruntime), `hashing` the word-overlap one, and
`sentence-transformers` the same model in fp32 on torch (the optional `local-embeddings`
extra, HF_HUB_OFFLINE=1 so nothing is fetched). OpenAI embeddings need the network: not measured.

Quality. The pages (all, or a seeded sample of `--pages` of them) are ingested through
KnowledgeBase (the app's path). Questions are derived from the corpus by a fixed recipe
(seeded, so the same every run):
  postgres (PostgreSQL 15's manual):
  * 30 "reference" questions: each SQL command page (sql-*.html) opens with
    "NAME — purpose" (e.g. "CREATE TABLE — define a new table"); the question is
    "How do I <purpose>?" (without the command's name) and any chunk of that page answers it.
  * 20 "section" questions: numbered subsections "x.y.z. Title" whose title (two words or
    more) is unique in the manual; the question is "How does <Title> work?" and the answer
    is a chunk under that heading on that page.
  python (Python 3.11's documentation, library/ and faq/ pages):
  * "faq" questions (FAQ-style: a question, its answer under it): every question heading
    of the FAQ pages ("How do I ...?"), asked as written; the answer is a chunk under it.
  * 30 "module" questions: library pages titled "module — Purpose" ("venv — Creation of
    virtual environments"); the question is "Which module is for <purpose>?" without the
    module's name, answered by any chunk of that page.
Reported per embedder and retriever (hybrid = what /api/search and the tutor use; vector
and full text alone for comparison): recall@5 (a right chunk in the top 5) and MRR@10.

Speed. Query embedding p50/p95: each question embedded alone, as a search does. Ingestion
chunks/s: the pages above (extract, chunk, embed, insert). For scale, synthetic corpora of
N chunks are made from the ingested chunks of the first embedder: each synthetic chunk is
70% of one real chunk's sentences plus 30% of another's, its vector the normalised 0.7/0.3
mix of their stored embeddings (so the vectors keep the corpus' structure without
embedding N texts). Rows are bulk-inserted, then the HNSW index is built (as `studyhall
reindex` would).

Scale corpus. By default (`--scale-corpus distinct`) the N chunks are not synthetic but the
first N of bench/corpus.py's corpus: 100k distinct real chunks (the two manuals, man pages,
installed packages' docstrings, /usr/share/doc), each embedded by the model itself, built
once and cached in `--corpus-dir` (bench/corpus.py says how), with its own questions made
by the same recipes (plus man pages' NAME lines), so the scale part also reports recall@5
and MRR@10 per retriever at N chunks and how many chunks each question's words match.
`--scale-corpus synthetic` is the old set (70/30 mixes of the quality part's chunks, whose
figures earlier sessions reported): with `--pages 60` it repeats ~373 real chunks ~270
times, so full text matches hundreds of identical rows per question. Search latency is the app's hybrid `KnowledgeBase.search(q, k=5)` over
real questions, query embedding included; HNSW recall@k compares `search_vector` (index,
ef_search as the app sets it) with the same query forced to an exact scan.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import re
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import corpus as real_corpus  # noqa: E402
from rag.chunking import chunk_text  # noqa: E402
from rag.embeddings import Embedder, make_embedder  # noqa: E402
from rag.ingest import ingest_paths  # noqa: E402
from rag.retrieval import Fusion, KnowledgeBase  # noqa: E402
from storage import documents as store  # noqa: E402
from storage.db import Database  # noqa: E402
from storage.embedded import EmbeddedPostgres, free_port  # noqa: E402
from storage.migrate import migrate  # noqa: E402
from tests.services import TEMPLATE, Postgres  # noqa: E402

CORPORA = {"postgres": Path("/usr/share/doc/postgresql-doc-15/html"), "python": Path("/usr/share/doc/python3.11/html")}
_MODULE = re.compile(r"^(?P<name>[\w.]+) — (?P<purpose>.+?)(?: — Python [\d.]+ documentation)?$")
_PURPOSE = re.compile(r"^(?P<name>[A-Z][A-Za-z_ ]+?) — (?P<purpose>[a-z].+?)\s*$", re.MULTILINE)
_SECTION = re.compile(r"^\d+\.\d+\.\d+\. (?P<title>.+)$")


@dataclass(frozen=True)
class Question:
    text: str
    document_id: uuid.UUID
    heading: str | None  # None: any chunk of the document answers it
    kind: str


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


async def build_questions(kb: KnowledgeBase, corpus: str) -> list[Question]:
    return await (python_questions(kb) if corpus == "python" else postgres_questions(kb))


async def python_questions(kb: KnowledgeBase) -> list[Question]:
    faq: dict[str, list[tuple[uuid.UUID, str]]] = {}
    modules: list[Question] = []
    for doc in await kb.list_documents(limit=100_000):
        source = Path(doc.source or "")
        if source.parent.name == "library" and (m := _MODULE.match(doc.title)):
            purpose = m["purpose"].rstrip(".")
            modules.append(Question(f"Which module is for {purpose[0].lower()}{purpose[1:]}?", doc.id, None, "module"))
        elif source.parent.name == "faq":
            full = await kb.get_document(doc.id, with_content=True)
            assert full is not None and full.content is not None
            for chunk in chunk_text(full.content):
                if chunk.heading_path and chunk.heading_path[-1].rstrip(" ¶").endswith("?"):
                    faq.setdefault(chunk.heading_path[-1], []).append((doc.id, chunk.heading_path[-1]))
    unique = sorted((h, places[0]) for h, places in faq.items() if len({d for d, _ in places}) == 1)
    rng = random.Random(20240601)
    rng.shuffle(modules)
    return [Question(h.rstrip(" ¶"), d, h, "faq") for h, (d, _) in unique] + modules[:30]


async def postgres_questions(kb: KnowledgeBase) -> list[Question]:
    docs = await kb.list_documents(limit=100_000)
    reference: list[Question] = []
    sections: dict[str, list[tuple[uuid.UUID, str]]] = {}
    for doc in docs:
        full = await kb.get_document(doc.id, with_content=True)
        assert full is not None and full.content is not None
        name = Path(doc.source or "").name
        if name.startswith("sql-"):
            m = _PURPOSE.search(full.content[:2000])
            if m:
                reference.append(Question(f"How do I {m['purpose'].rstrip('.')}?", doc.id, None, "reference"))
            continue
        for chunk in chunk_text(full.content):
            if chunk.heading_path and (m := _SECTION.match(chunk.heading_path[-1])) and len(m["title"].split()) >= 2:
                sections.setdefault(m["title"], []).append((doc.id, chunk.heading_path[-1]))
    unique = sorted(
        (title, places[0]) for title, places in sections.items() if len({d for d, _ in places}) == 1
    )
    rng = random.Random(20240601)
    rng.shuffle(reference)
    picked = rng.sample(unique, min(20, len(unique)))
    return reference[:30] + [Question(f"How does {t} work?", d, h, "section") for t, (d, h) in picked]


def first_hit(question: Question, results: list[tuple[uuid.UUID, list[str]]]) -> int | None:
    for rank, (document_id, heading_path) in enumerate(results, start=1):
        if document_id == question.document_id and (question.heading is None or question.heading in heading_path):
            return rank
    return None


async def evaluate(kb: KnowledgeBase, questions: list[Question]) -> None:
    emb = kb.embedder
    ranks: dict[str, list[int | None]] = {"hybrid": [], "vector": [], "full text": []}
    for q in questions:
        hybrid = await kb.search(q.text, k=10)  # the app's search, as /api/search and the tutor call it
        [vec] = await emb.embed([q.text])
        async with kb.db.connection() as conn:
            vector_hits = await store.search_vector(conn, vec, model=emb.name, dim=emb.dim, k=10)
            text_hits = await store.search_text(conn, q.text, k=10)
        ranks["hybrid"].append(first_hit(q, [(r.document_id, r.heading_path) for r in hybrid]))
        ranks["vector"].append(first_hit(q, [(h.document_id, h.heading_path) for h in vector_hits]))
        ranks["full text"].append(first_hit(q, [(h.document_id, h.heading_path) for h in text_hits]))
    kinds = sorted({q.kind for q in questions})
    print(f"  retrieval quality, {len(questions)} questions "
          f"({', '.join(f'{sum(q.kind == k for q in questions)} {k}' for k in kinds)})")
    print(f"    {'retriever':<10} {'recall@5':>9} {'MRR@10':>8}   recall@5 / MRR@10 per kind ({', '.join(kinds)})")
    for name, found in ranks.items():
        per_kind = []
        for kind in kinds:
            sub = [r for r, q in zip(found, questions) if q.kind == kind]
            per_kind.append(f"{recall_at(sub, 5):.2f} / {mrr(sub):.3f}")
        print(f"    {name:<10} {recall_at(found, 5):>9.2f} {mrr(found):>8.3f}   {'; '.join(per_kind)}")


def recall_at(found: list[int | None], k: int) -> float:
    return sum(1 for r in found if r is not None and r <= k) / max(1, len(found))


def mrr(found: list[int | None]) -> float:
    return sum(1 / r for r in found if r is not None and r <= 10) / max(1, len(found))


async def query_latency(emb: Embedder, questions: list[Question]) -> None:
    """Each question embedded alone, as a search embeds its query."""
    texts = [q.text for q in questions]
    for text in texts[:5]:
        await emb.embed([text])
    times = []
    for _ in range(max(1, 200 // max(1, len(texts)))):
        for text in texts:
            t0 = time.perf_counter()
            await emb.embed([text])
            times.append((time.perf_counter() - t0) * 1000)
    print(f"  query embedding ({len(times)} single queries): p50 {percentile(times, 50):.1f} ms, "
          f"p95 {percentile(times, 95):.1f} ms")


def pick_pages(docs: Path, corpus: str, pages: int | None) -> list[Path]:
    """The corpus' HTML pages, or a seeded sample of them (the FAQ pages always in)."""
    if corpus == "python":
        files = sorted((docs / "library").glob("*.html"))
        must = sorted((docs / "faq").glob("*.html"))
    else:
        files, must = sorted(docs.glob("*.html")), []
    if pages and pages < len(files):
        files = sorted(random.Random(7).sample(files, pages))
    return must + files


async def quality_and_ingest(
    pg: Postgres, files: list[Path], corpus: str, embedder: str, with_pool: bool
) -> tuple[list[str], list[tuple[str, list[str], list[float]]]]:
    """Ingest the pages with `embedder`, evaluate; return question texts and (if `with_pool`,
    for the scale part) every stored chunk as (content, headings, its stored vector)."""
    name = await pg.create_database()
    db = await Database.connect(pg.url(name), min_size=1, max_size=4)
    try:
        kb = KnowledgeBase(db, bench_embedder(embedder))
        print(f"\nembedder {kb.embedder.name} ({corpus})")
        await kb.ensure_index()  # as `studyhall ingest` does: the active model's HNSW index exists first
        started = time.perf_counter()
        report = await ingest_paths(kb, files, show_progress=False)
        took = time.perf_counter() - started
        print(f"  ingestion: {len(files)} pages, {report.added} documents, {report.chunks} chunks in {took:.1f} s "
              f"= {report.chunks / took:.1f} chunks/s ({len(report.failed)} failed, {report.duplicates} duplicates)")
        questions = await build_questions(kb, corpus)
        await query_latency(kb.embedder, questions)
        await evaluate(kb, questions)
        if not with_pool:
            return [q.text for q in questions], []
        async with db.connection() as conn:
            rows = await conn.fetch("SELECT content, heading_path, embedding::text AS v FROM chunks ORDER BY id")
        pool = [(r["content"], list(r["heading_path"]), [float(x) for x in r["v"][1:-1].split(",")]) for r in rows]
        return [q.text for q in questions], pool
    finally:
        await db.close()
        await pg.drop_database(name)


def bench_embedder(kind: str) -> Embedder:
    """`onnx@256`: the default model reading at most 256 word pieces (the default reads 128)."""
    if kind.startswith("onnx@"):
        return make_embedder("onnx", max_tokens=int(kind.removeprefix("onnx@")))
    return make_embedder(kind)


def synthetic_chunks(
    pool: list[tuple[str, list[str], list[float]]], n: int, seed: int, model: str
) -> list[store.NewChunk]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        (ca, ha, va), (cb, _, vb) = rng.sample(pool, 2)
        sa, sb = re.split(r"(?<=[.!?])\s+", ca), re.split(r"(?<=[.!?])\s+", cb)
        content = " ".join(sa[: max(1, round(len(sa) * 0.7))] + sb[: max(1, round(len(sb) * 0.3))])
        mixed = [0.7 * a + 0.3 * b for a, b in zip(va, vb)]
        norm = math.sqrt(sum(x * x for x in mixed)) or 1.0
        out.append(store.NewChunk(i, content, 0, len(content), len(content) // 4, ha, {model: [x / norm for x in mixed]}))
    return out


@dataclass(frozen=True)
class ScaleQuestion:
    """A scale question; `source` (and `heading`) say which chunks answer it, when known
    (the distinct corpus' questions; the synthetic set's have no answer key)."""

    text: str
    source: str | None = None
    heading: str | None = None


async def load_distinct(db: Database, emb: Embedder, n: int, corpus_dir: Path) -> list[ScaleQuestion]:
    """The first `n` chunks of bench/corpus.py's corpus (its text built if missing; its
    vectors as far as bench/corpus.py has embedded them), inserted a document at a time;
    returns its questions whose answer is among them."""
    await asyncio.to_thread(real_corpus.build_text_once, corpus_dir)
    vectors, real = real_corpus.load_vectors(corpus_dir, emb.name, n)
    print(f"  distinct corpus {corpus_dir}: {real} of {n} vectors embedded by {emb.name}, "
          f"{n - real} stand-ins (0.7/0.3 mixes of real ones: run bench/corpus.py to embed them all)")
    chunks = real_corpus.load_chunks(corpus_dir)[:n]
    docs = {d.doc: d for d in real_corpus.load_documents(corpus_dir)}
    by_doc: dict[int, list[int]] = {}
    for i, c in enumerate(chunks):
        by_doc.setdefault(c.doc, []).append(i)
    for doc, rows in by_doc.items():
        new = [store.NewChunk(j, chunks[i].content, 0, len(chunks[i].content), len(chunks[i].content) // 4,
                              chunks[i].heading_path, {emb.name: vectors[i].tolist()}) for j, i in enumerate(rows)]
        async with db.transaction() as conn:
            await store.insert_document(
                conn, title=docs[doc].title, content="\n\n".join(chunks[i].content for i in rows),
                content_hash=uuid.uuid4().hex, chunks=new, fallback_model=emb.name, source=docs[doc].source,
            )
    # Only a question whose answer document has real vectors keeps its answer key: recall
    # over stand-in vectors would measure the stand-ins.
    return [ScaleQuestion(q.text, docs[q.doc].source if max(by_doc[q.doc]) < real else None, q.heading)
            for q in real_corpus.load_questions(corpus_dir) if q.doc in by_doc]


async def load_synthetic(db: Database, emb: Embedder, n: int, pool: list[tuple[str, list[str], list[float]]],
                         queries: list[str]) -> list[ScaleQuestion]:
    per_doc = 100
    for first in range(0, n, per_doc):
        chunks = synthetic_chunks(pool, min(per_doc, n - first), seed=first, model=emb.name)
        async with db.transaction() as conn:
            await store.insert_document(
                conn, title=f"synthetic {first // per_doc}", content=" ".join(c.content for c in chunks),
                content_hash=uuid.uuid4().hex, chunks=chunks, fallback_model=emb.name,
            )
    return [ScaleQuestion(q) for q in queries]


async def scale(
    pg: Postgres, n: int, emb: Embedder, pool: list[tuple[str, list[str], list[float]]], queries: list[str],
    samples: int, keep: bool = False, passes: int = 1, corpus_dir: Path | None = None,
) -> None:
    """Search latency and HNSW recall at `n` chunks: of the distinct corpus in `corpus_dir`,
    or (None) synthetic ones mixed from `pool`. With `keep` the database is named after
    `n`, the model and the corpus and left in place: the next run with `--keep-dir` reuses
    it (and the questions stored in it) instead of building it again."""
    kind = "synthetic" if corpus_dir is None else "distinct"
    name = scale_db_name(n, emb.name, kind) if keep else await pg.create_database()
    if keep and await scale_db_ready(pg, name):
        questions = await stored_questions(pg, name)
        await migrate(pg.url(name))  # a migration added since it was built
        print(f"\n{n} chunks ({kind}), {emb.name}: reusing database {name} ({len(questions)} questions)")
        db = await Database.connect(pg.url(name), min_size=1, max_size=4)
        await scale_measure(db, n, emb, questions, samples, passes)
        await db.close()
        return
    if keep:
        await pg.drop_database(name)
        await admin_sql(pg.admin_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    admin = await Database.connect(pg.url(name), min_size=1, max_size=1)
    async with admin.connection() as conn:  # bench setup: room for the index build, bulk load first
        await conn.execute(f"ALTER DATABASE {name} SET maintenance_work_mem = '1GB'")
        await conn.execute(f"DROP INDEX IF EXISTS {store.vector_index_name(emb.name)}")
    await admin.close()
    db = await Database.connect(pg.url(name), min_size=1, max_size=4)
    try:
        kb = KnowledgeBase(db, emb)
        await kb.active_model()  # an empty knowledge base takes the configured model
        started = time.perf_counter()
        if corpus_dir is None:
            questions = await load_synthetic(db, emb, n, pool, queries)
        else:
            questions = await load_distinct(db, emb, n, corpus_dir)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        await kb.ensure_index()
        async with db.connection() as conn:
            await conn.execute("ANALYZE chunks")
        built = time.perf_counter() - started
        print(f"\n{n} chunks ({kind}), {emb.name}: bulk insert {loaded:.1f} s ({n / loaded:.0f} rows/s), "
              f"HNSW build {built:.1f} s")
        if keep:
            async with db.connection() as conn:
                await conn.execute("CREATE TABLE bench_questions (i serial PRIMARY KEY, text text NOT NULL, "
                                   "source text, heading text)")
                await conn.executemany("INSERT INTO bench_questions (text, source, heading) VALUES ($1, $2, $3)",
                                       [(q.text, q.source, q.heading) for q in questions])
        await scale_measure(db, n, emb, questions, samples, passes)
    finally:
        await db.close()
        if not keep:
            await pg.drop_database(name)


def scale_db_name(n: int, model: str, kind: str = "synthetic") -> str:
    """The synthetic set keeps the name earlier runs gave it, so their databases are reused."""
    suffix = "" if kind == "synthetic" else f"_{kind}"
    return "scale_" + re.sub(r"[^a-z0-9]+", "_", f"{n}_{model}".lower()).strip("_")[:50] + suffix


async def admin_sql(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def scale_db_ready(pg: Postgres, name: str) -> bool:
    if not await admin_sql(pg.admin_url, "SELECT 1 FROM pg_database WHERE datname = $1", name):
        return False
    [row] = await admin_sql(pg.url(name), "SELECT to_regclass('bench_questions') IS NOT NULL AS ok")
    return bool(row["ok"])


async def stored_questions(pg: Postgres, name: str) -> list[ScaleQuestion]:
    [row] = await admin_sql(pg.url(name), "SELECT count(*) AS n FROM information_schema.columns "
                                          "WHERE table_name = 'bench_questions' AND column_name = 'source'")
    columns = "text, source, heading" if row["n"] else "text, NULL AS source, NULL AS heading"
    rows = await admin_sql(pg.url(name), f"SELECT {columns} FROM bench_questions ORDER BY i")
    return [ScaleQuestion(r["text"], r["source"], r["heading"]) for r in rows]


async def text_now(conn: asyncpg.Connection, q: str, *, k: int, course: str | None = None) -> list[uuid.UUID]:
    return [h.chunk_id for h in await store.search_text(conn, q, k=k, course=course)]


async def match_counts(db: Database, texts: list[str]) -> list[int]:
    """How many chunks hold every word of each question: what full text has to rank."""
    async with db.connection() as conn:
        return [await conn.fetchval(f"SELECT count(*) FROM chunks WHERE tsv @@ plainto_tsquery('{store.TS_CONFIG}', $1)", t)
                for t in texts]


async def scale_quality(kb: KnowledgeBase, questions: list[ScaleQuestion]) -> None:
    """recall@5 and MRR@10 per retriever over the questions that have an answer key."""
    keyed = [q for q in questions if q.source is not None]
    if not keyed:
        return
    found: dict[str, list[int | None]] = {}
    for label, fusion in (("hybrid", Fusion(text_budget_ms=0)), ("vector", Fusion(mode="vector")),
                          ("full text", Fusion(mode="text"))):
        for q in keyed:
            hits = await kb.search(q.text, k=10, fusion=fusion)
            rank = next((r for r, h in enumerate(hits, start=1) if h.source == q.source
                         and (q.heading is None or q.heading in h.heading_path)), None)
            found.setdefault(label, []).append(rank)
    print(f"  quality at this size, {len(keyed)} questions with an answer key (no budget): "
          + "; ".join(f"{label} recall@5 {recall_at(r, 5):.2f} MRR@10 {mrr(r):.3f}" for label, r in found.items()))


async def scale_measure(
    db: Database, n: int, emb: Embedder, questions: list[ScaleQuestion], samples: int, passes: int
) -> None:
    """Hybrid search (with and without the full-text budget) and each query alone, `passes`
    times each in turn (ratios within one run are what the shared machine leaves intact)."""
    kb = KnowledgeBase(db, emb)
    unbudgeted = KnowledgeBase(db, emb, fusion=Fusion(text_budget_ms=0))
    rng = random.Random(3)
    queries = [q.text for q in questions]
    qs = [rng.choice(queries) for _ in range(samples)]
    counts = await match_counts(db, sorted(set(qs)))
    print(f"  {len(set(qs))} distinct questions; chunks matching all their words: median "
          f"{statistics.median(counts):.0f}, p95 {percentile([float(c) for c in counts], 95):.0f}, max {max(counts)}")
    print(f"  load average {os.getloadavg()[0]:.1f} / {os.getloadavg()[1]:.1f} (1 / 5 min)")
    for q in qs:  # warm caches: a reused database starts with cold shared buffers
        await kb.search(q, k=5)
    # One pass over all questions per measure (hybrid first): measured in one loop, each
    # question's later measures found the pages its first had just brought into shared
    # buffers, and the parts looked faster than the whole.
    times: dict[str, list[list[float]]] = {}
    vectors = {q: (await emb.embed([q]))[0] for q in set(qs)}
    for _ in range(passes):
        hybrid, free, vector, text, embed = [], [], [], [], []
        for q in qs:
            t0 = time.perf_counter()
            await kb.search(q, k=5)
            hybrid.append((time.perf_counter() - t0) * 1000)
        for q in qs:
            t0 = time.perf_counter()
            await unbudgeted.search(q, k=5)
            free.append((time.perf_counter() - t0) * 1000)
        for q in qs:  # the part of hybrid search no query plan can help
            t0 = time.perf_counter()
            await emb.embed([q])
            embed.append((time.perf_counter() - t0) * 1000)
        async with db.connection() as conn:
            for q in qs:
                t0 = time.perf_counter()
                await store.search_vector(conn, vectors[q], model=emb.name, dim=emb.dim, k=20)
                vector.append((time.perf_counter() - t0) * 1000)
            for q in qs:
                t0 = time.perf_counter()
                await text_now(conn, q, k=20)
                text.append((time.perf_counter() - t0) * 1000)
        for label, values in (("hybrid search k=5 (embed + both queries)", hybrid),
                              ("hybrid search k=5, no full-text budget", free),
                              ("  query embedding alone", embed),
                              ("  vector query k=20 (HNSW)", vector), ("  full-text query k=20", text)):
            times.setdefault(label, []).append(values)
    for label, runs in times.items():
        figures = "; ".join(f"p50 {percentile(v, 50):5.1f} p95 {percentile(v, 95):5.1f}" for v in runs)
        print(f"  {label:<42} {figures} ms")
    print(f"  full-text budget {kb.fusion.text_budget_ms} ms: {kb.text_over_budget} of {len(qs) * passes} hybrid "
          f"searches answered from vectors alone")
    print(f"  load average after: {os.getloadavg()[0]:.1f} / {os.getloadavg()[1]:.1f} (1 / 5 min)")
    await scale_quality(kb, questions)

    for k in (10, 20):
        recalls = []
        for q in qs[:100]:
            async with db.connection() as conn:
                approx = {h.chunk_id for h in await store.search_vector(conn, vectors[q], model=emb.name, dim=emb.dim, k=k)}
                async with conn.transaction():
                    await conn.execute("SET LOCAL enable_indexscan = off")  # bench: force the exact scan
                    exact = {h.chunk_id for h in await store.search_vector(conn, vectors[q], model=emb.name, dim=emb.dim, k=k)}
            recalls.append(len(approx & exact) / max(1, len(exact)))
        print(f"  HNSW recall@{k} vs exact (ef_search {max(store.EF_SEARCH_MIN, k)}): {statistics.mean(recalls):.3f} "
              f"(min {min(recalls):.2f}, {len(recalls)} queries)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="postgres")
    parser.add_argument("--docs", type=Path, default=None, help="the corpus' HTML folder (default: Debian's)")
    parser.add_argument("--pages", type=int, default=None, help="a seeded sample of this many pages (default: all)")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--embedders", default="onnx",
                        help="comma-separated: onnx (default), hashing, sentence-transformers, onnx@N "
                             "(reading N word pieces); the scale part uses the first")
    parser.add_argument("--keep-dir", type=Path, default=None,
                        help="run PostgreSQL in this folder and keep it: each scale database is built once "
                             "and reused by later runs with the same folder (the quality part is then skipped)")
    parser.add_argument("--passes", type=int, default=1, help="latency passes over the questions at each size")
    parser.add_argument("--scale-corpus", choices=("distinct", "synthetic"), default="distinct",
                        help="distinct: bench/corpus.py's real chunks (default); synthetic: the old mixes")
    parser.add_argument("--corpus-dir", type=Path, default=real_corpus.DEFAULT_OUT,
                        help="where bench/corpus.py keeps the distinct corpus")
    parser.add_argument("--shared-buffers", default=None,
                        help="the embedded PostgreSQL's shared_buffers, e.g. 128MB (default: as studyhall serve)")
    args = parser.parse_args()
    logging.getLogger("rag.retrieval").setLevel(logging.ERROR)  # over-budget searches are counted, not logged
    embedders = [e.strip() for e in args.embedders.split(",") if e.strip()]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model must never be fetched from the Hub
    docs = args.docs or CORPORA[args.corpus]
    if not docs.is_dir():
        raise SystemExit(f"{docs} not found: apt-get install postgresql-doc-15 python3.11-doc (or pass --docs)")
    files = pick_pages(docs, args.corpus, args.pages)
    pg = await asyncio.to_thread(start_postgres, args.shared_buffers, args.keep_dir)
    try:
        print(f"PostgreSQL shared_buffers: {await pg.setting('shared_buffers')}")
        sizes = [int(s) for s in args.sizes.split(",") if s] if not args.skip_scale else []
        emb = bench_embedder(embedders[0])
        distinct = args.scale_corpus == "distinct"
        reuse = args.keep_dir is not None and bool(sizes) and all(
            [await scale_db_ready(pg, scale_db_name(n, emb.name, args.scale_corpus)) for n in sizes])
        questions: list[str] = []
        pool: list[tuple[str, list[str], list[float]]] = []
        for i, embedder in enumerate([] if reuse else embedders):
            qs, p = await quality_and_ingest(pg, files, args.corpus, embedder,
                                             with_pool=i == 0 and bool(sizes) and not distinct)
            questions, pool = (qs, p) if i == 0 else (questions, pool)
        for n in sizes:
            await scale(pg, n, emb, pool, questions, args.queries, keep=args.keep_dir is not None, passes=args.passes,
                        corpus_dir=args.corpus_dir if distinct else None)
    finally:
        if args.keep_dir is not None and pg.embedded is not None:
            await asyncio.to_thread(pg.embedded.stop)
        else:
            await asyncio.to_thread(pg.stop)


def start_postgres(shared_buffers: str | None, keep_dir: Path | None) -> Postgres:
    """The bench's PostgreSQL: throwaway, or kept in `keep_dir` for the next run."""
    if keep_dir is None:
        return Postgres.start(shared_buffers)
    keep_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keep_dir, 0o755)
    embedded = EmbeddedPostgres(keep_dir, port=free_port(), listen_tcp=True, shared_buffers=shared_buffers)
    pg = Postgres(embedded.start(), embedded)
    asyncio.run(pg._make_template())
    return pg


if __name__ == "__main__":
    asyncio.run(main())
