"""Calibrate the tutor's relevance thresholds (rag/relevance.py) on your own material.

    STUDYHALL_DATA_DIR=... .venv/bin/python bench/relevance_calibration.py \
        [--embedder hashing|sentence-transformers] [--answers] [--json FILE]

Run it against a knowledge base filled with `studyhall ingest` (docs/tutor.md used
Python's and PostgreSQL's documentation: `apt-get install python3.11-doc postgresql-doc-15`).
It asks ON_TOPIC questions (answered by that material) and OFF_TOPIC ones (not), and prints
for each the best hit's cosine similarity, whether full text matched every word, the
calibrated confidence and the verdict, then the similarity distribution of both groups:
`relevant` belongs above the off-topic maximum and below most on-topic best hits.

`hashing` (the default) uses the stored vectors through the app's hybrid search. Any other
embedder embeds chunks in memory first (numpy; `sentence-transformers` needs the
`local-embeddings` extra) and searches them exhaustively, with the database's full text as
the second signal, so the stored vectors need not be rebuilt to calibrate a new model.
`--sample N` embeds only a pool: for every question its 40 nearest chunks by the stored
(hashing) vectors and its 40 best full-text matches, plus N random chunks (seeded); on a
busy 2-core machine this is what fits in minutes. The pool holds the likely best hits of
on-topic questions; for off-topic ones the best similarity over the pool is a slight
underestimate of the best over the whole corpus, so leave a margin above it.
`--answers` prints the offline tutor's answer to each SCENARIO question, and how long
composing it took (splitting, embedding the sentences, choosing: what the offline tutor adds
before its first delta).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handlers.settings import Settings
from rag.decide import decide
from rag.embeddings import Embedder, make_embedder
from rag.offline import offline_answer
from rag.prompts import Passage
from rag.relevance import DEFAULT_THRESHOLDS, Judgement, family, judge
from rag.retrieval import KnowledgeBase, SearchResult, embedding_input
from server.cli import core_for_command
from storage import documents as store

# The newcomer's scenario (issue 15): ordinary questions on Python's and PostgreSQL's docs.
SCENARIO = [
    "Why does 0.1 + 0.2 not equal 0.3?",
    "How do I create a virtual environment?",
    "What is a list comprehension?",
    "How do I read a file line by line?",
    "What does the with statement do?",
    "How do I create an index in PostgreSQL?",
    "What is the difference between a tuple and a list?",
    "How do I handle exceptions in Python?",
    "What is a decorator?",
    "How do I start a transaction in PostgreSQL?",
    "What does VACUUM do?",
    "How do I sort a dictionary by value?",
]
ON_TOPIC = [*SCENARIO,
    "How do I open a file for writing?",
    "What is a generator?",
    "How do I format numbers in an f-string?",
    "What does the yield keyword do?",
    "How do I parse command-line arguments?",
    "How do I define a class with a constructor?",
    "What is a lambda expression?",
    "How do I get the current date and time?",
    "How do I parse JSON text into Python objects?",
    "How do I run an external command and capture its output?",
    "What is a primary key?",
    "How do I add a column to an existing table?",
    "What is a foreign key constraint?",
    "How do I back up a database with pg_dump?",
    "What does EXPLAIN show about a query?",
    "How do I match a pattern with regular expressions in Python?",
    "How do I make a shallow copy of a list?",
    "What is a data class?",
    "How do I delete duplicate rows from a table?",
    "What is a window function in SQL?",
]
OFF_TOPIC = [
    "What causes the seasons on Earth?",
    "Who painted the Mona Lisa?",
    "How do I bake sourdough bread?",
    "How does photosynthesis make sugar?",
    "How do vaccines train the immune system?",
    "What started the First World War?",
    "How do I change a flat tyre on a bicycle?",
    "What is the capital of Australia?",
    "How does a rainbow form?",
    "How do I tie a bow tie?",
    "Why is the sky blue?",
    "What is inflation in economics?",
    "How many players are on a football team?",
    "What happened during the French Revolution?",
    "How do plants absorb water through their roots?",
]


class Exhaustive:
    """Search for an embedder whose vectors are not stored: every chunk embedded here."""

    def __init__(self, embedder: Embedder, kb: KnowledgeBase, sample: int | None) -> None:
        self.embedder, self.kb, self.sample = embedder, kb, sample
        self.rows: list[Any] = []
        self.matrix: Any = None

    async def load(self, questions: list[str]) -> None:
        import random

        import numpy as np

        async with self.kb.db.connection() as conn:
            self.rows = await conn.fetch(
                "SELECT c.id, c.document_id, d.title, d.source, c.content, c.heading_path"
                " FROM chunks c JOIN documents d ON d.id = c.document_id ORDER BY c.id")
        if self.sample is not None:
            stored = KnowledgeBase(self.kb.db, make_embedder("hashing"))
            pool: set[Any] = set()
            for q in questions:
                pool |= {h.chunk_id for h in await stored.search(q, k=10)}
                [vector] = await stored.embedder.embed([q])
                async with self.kb.db.connection() as conn:
                    pool |= {h.chunk_id for h in await store.search_vector(
                        conn, vector, model=stored.embedder.name, dim=stored.embedder.dim, k=40)}
                    pool |= {h.chunk_id for h in await store.search_text(conn, q, k=40)}
            rest = [r for r in self.rows if r["id"] not in pool]
            picked = random.Random(15).sample(rest, min(self.sample, len(rest)))
            self.rows = [r for r in self.rows if r["id"] in pool] + picked
            print(f"  pool {len(pool)} chunks + {len(picked)} sampled", file=sys.stderr, flush=True)
        name = self.embedder.name.replace("/", "_").replace(":", "_")
        cache = Path(f"/tmp/relevance-{name}-{len(self.rows)}-{self.sample}.npy")
        if cache.exists():
            self.matrix = np.load(cache)
            return
        started = time.monotonic()
        texts = [embedding_input(list(r["heading_path"]), r["content"]) for r in self.rows]
        vectors: list[list[float]] = []
        for first in range(0, len(texts), 128):
            vectors += await self.embedder.embed(texts[first:first + 128])
            print(f"  embedded {len(vectors)}/{len(texts)} chunks", file=sys.stderr, flush=True)
        matrix = np.asarray(vectors, dtype=np.float32)
        self.matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        np.save(cache, self.matrix)
        print(f"\n  {len(texts)} chunks in {time.monotonic() - started:.0f} s", file=sys.stderr)

    async def search(self, q: str, k: int = 5) -> list[SearchResult]:
        import numpy as np

        [vector] = await self.embedder.embed([q])
        query = np.asarray(vector, dtype=np.float32)
        query /= max(float(np.linalg.norm(query)), 1e-12)
        sims = self.matrix @ query
        top = np.argsort(-sims)[:k]
        async with self.kb.db.connection() as conn:
            text = {h.chunk_id: h.score for h in await store.search_text(conn, q, k=50)}
        out = []
        for i in top:
            r = self.rows[int(i)]
            out.append(SearchResult(r["id"], r["document_id"], r["title"], r["content"], float(sims[i]),
                                    list(r["heading_path"]), float(sims[i]), text.get(r["id"]), r["source"]))
        return out


def summary(name: str, values: list[float]) -> str:
    qs = statistics.quantiles(values, n=10) if len(values) > 2 else values
    return (f"{name:9s} n={len(values):2d} min {min(values):.3f}  p10 {qs[0]:.3f}  median {statistics.median(values):.3f}"
            f"  p90 {qs[-1]:.3f}  max {max(values):.3f}")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--embedder", default="hashing")
    parser.add_argument("--answers", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--sample", type=int, help="embed only a pool per question plus N random chunks")
    args = parser.parse_args()
    settings = Settings.from_env()
    embedder = make_embedder(args.embedder)
    thresholds = DEFAULT_THRESHOLDS[family(embedder.name)]
    print(f"embedder {embedder.name}, thresholds {thresholds}")
    async with core_for_command(settings) as core:
        kb = KnowledgeBase(core.db, embedder)
        searcher: Any = kb
        if args.embedder != "hashing":
            searcher = Exhaustive(embedder, kb, args.sample)
            await searcher.load([*ON_TOPIC, *OFF_TOPIC])
        rows = []
        compose_ms: list[float] = []
        for group, questions in (("on", ON_TOPIC), ("off", OFF_TOPIC)):
            for q in questions:
                # Exhaustive scores every hit itself; the knowledge base fills in full-text-only hits.
                hits = (await searcher.search_scored(q, k=5)).hits if searcher is kb else await searcher.search(q, k=5)
                judgement: Judgement = judge(q, hits, embedder.name, thresholds)
                sims = [h.similarity for h in hits if h.similarity is not None]
                best = max(judgement.judged, key=lambda j: j.confidence, default=None)
                rows.append({
                    "group": group, "question": q, "best_similarity": round(max(sims, default=0.0), 4),
                    "text_match": any(h.text_rank for h in hits), "confidence": judgement.best,
                    "coverage": max((j.coverage or 0.0 for j in judgement.judged), default=0.0),
                    "relevant": judgement.best >= 0.5, "top_title": best.hit.title if best else None,
                })
                r = rows[-1]
                print(f"{group:3s} sim {r['best_similarity']:.3f} text {'y' if r['text_match'] else '-'} "
                      f"cov {r['coverage']:.2f} "
                      f"conf {r['confidence']:.2f} {'REL' if r['relevant'] else '   '} {q}  [{r['top_title']}]")
                if args.answers and q in SCENARIO:
                    passages = [Passage(str(j.hit.chunk_id), str(j.hit.document_id), j.hit.title, j.hit.content,
                                        j.confidence, j.hit.source) for j in judgement.judged]
                    decision = decide(q, [], passages)
                    started = time.perf_counter()
                    text, _ = await offline_answer(q, passages, embedder.embed)
                    compose_ms.append((time.perf_counter() - started) * 1000)
                    print(f"    decision {decision.action}/{decision.reason} confidence {decision.confidence}")
                    print("    " + text.replace("\n", "\n    "))
        on = [r["best_similarity"] for r in rows if r["group"] == "on"]
        off = [r["best_similarity"] for r in rows if r["group"] == "off"]
        print(summary("on-topic", on))
        print(summary("off-topic", off))
        kept = sum(r["relevant"] for r in rows if r["group"] == "on")
        leaked = sum(r["relevant"] for r in rows if r["group"] == "off")
        print(f"relevant with these thresholds: on-topic {kept}/{len(on)}, off-topic {leaked}/{len(off)}")
        if compose_ms:
            print(f"offline answer composed in median {statistics.median(compose_ms):.1f} ms, "
                  f"max {max(compose_ms):.1f} ms ({len(compose_ms)} answers)")
        if args.json:
            Path(args.json).write_text(json.dumps({"embedder": embedder.name, "rows": rows}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
