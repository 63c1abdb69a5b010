"""Embedder speed side by side: query embedding latency and chunks/s for each embedder, on
the same texts in one process, plus how close the default (int8) model's vectors are to the
fp32 sentence-transformers model's.

    .venv/bin/python bench/embedder_bench.py [--docs DIR] [--chunks 256] [--queries 200]
        [--embedders onnx,hashing,sentence-transformers]

Texts: chunks of PostgreSQL's HTML manual (apt-get install postgresql-doc-15) cut by the
app's chunker (350 tokens; MiniLM reads the first 256 word pieces), and the titles of those
chunks' sections as questions. Each query is embedded alone, as a search does; chunks in
the app's batches (KnowledgeBase.embed_batch). The machine's 2 cores are shared: compare
the embedders' ratios within one run rather than absolute figures between runs.
`sentence-transformers` needs the optional `local-embeddings` extra (torch); without it, it
is skipped with a note.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.retrieval_bench import percentile  # noqa: E402
from rag.chunking import chunk_text  # noqa: E402
from rag.embeddings import Embedder, EmbedderUnavailable, make_embedder  # noqa: E402
from rag.extract import extract_file  # noqa: E402
from rag.retrieval import embedding_input  # noqa: E402

DOCS = Path("/usr/share/doc/postgresql-doc-15/html")


def corpus(docs: Path, n: int) -> tuple[list[str], list[str]]:
    chunks: list[str] = []
    questions: list[str] = []
    for path in sorted(docs.glob("*.html")):
        for chunk in chunk_text(extract_file(path).text):
            chunks.append(embedding_input(chunk.heading_path, chunk.content))
            if chunk.heading_path:
                questions.append(f"How does {chunk.heading_path[-1]} work?")
        if len(chunks) >= n:
            break
    return chunks[:n], questions


async def measure(emb: Embedder, chunks: list[str], questions: list[str], queries: int, batch: int) -> list[list[float]]:
    for q in questions[:5]:
        await emb.embed([q])
    times = []
    for i in range(queries):
        t0 = time.perf_counter()
        await emb.embed([questions[i % len(questions)]])
        times.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    vectors: list[list[float]] = []
    for first in range(0, len(chunks), batch):
        vectors.extend(await emb.embed(chunks[first:first + batch]))
    took = time.perf_counter() - t0
    print(f"{emb.name:<42} query p50 {percentile(times, 50):6.1f} ms  p95 {percentile(times, 95):6.1f} ms   "
          f"{len(chunks) / took:6.1f} chunks/s")
    return vectors


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=DOCS)
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64, help="texts per embed call (the app's embed_batch)")
    parser.add_argument("--embedders", default="onnx,hashing,sentence-transformers")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    chunks, questions = corpus(args.docs, args.chunks)
    print(f"{len(chunks)} chunks, {args.queries} single queries; cpu count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    results: dict[str, list[list[float]]] = {}
    for kind in (e.strip() for e in args.embedders.split(",") if e.strip()):
        try:
            emb = make_embedder(kind)
        except EmbedderUnavailable as exc:
            print(f"{kind:<42} not measured: {exc}")
            continue
        results[kind] = await measure(emb, chunks, questions, args.queries, args.batch)
    if "onnx" in results and "sentence-transformers" in results:
        cos = sorted(sum(a * b for a, b in zip(u, v))
                     for u, v in zip(results["onnx"], results["sentence-transformers"]))
        print(f"int8 ONNX vs fp32 torch vectors, cosine: mean {sum(cos) / len(cos):.4f}, min {cos[0]:.4f}")


if __name__ == "__main__":
    asyncio.run(main())
