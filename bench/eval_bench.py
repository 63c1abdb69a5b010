"""Retrieval quality on the committed evaluation sets: the README's table, regenerated.

    apt-get install -y python3.11-doc postgresql-doc-15
    pip install -e '.[bench]'       # beautifulsoup4, for bench/evalsets/build.py
    python bench/eval_bench.py                                  # hashing, both sets
    python bench/eval_bench.py --embedder NAME --weights 1:1,1:0.5,1:0.25,0.5:1
    python bench/eval_bench.py --set python-faq

For each set (bench/evalsets/<set>/questions.jsonl) it builds the corpus with
bench/evalsets/build.py, ingests it into a fresh database of a throwaway PostgreSQL through
the app's `KnowledgeBase` (course = the set's name), then runs `studyhall eval`'s code
(handlers/evaluation.py `run_eval`: every retriever through `KnowledgeBase.search`) for
vector alone, full text alone and hybrid at each `--weights` (vector:text), and prints the
eval table per set and, last, one Markdown table (embedder × retriever × set) to paste into
the README. `--embedder` is any name `make_embedder` knows. Latency shares two busy cores
with whatever else runs: compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.evalsets.build import build_postgres, build_python_faq  # noqa: E402
from handlers.evaluation import EvalReport, run_eval  # noqa: E402
from rag.embeddings import make_embedder  # noqa: E402
from rag.ingest import ingest_paths  # noqa: E402
from rag.retrieval import Fusion, KnowledgeBase  # noqa: E402
from server.evaluation import parse_weights, read_questions  # noqa: E402
from storage.db import Database  # noqa: E402
from tests.services import Postgres  # noqa: E402

SETS = {"python-faq": build_python_faq, "postgres": build_postgres}
EVALSETS = ROOT / "bench" / "evalsets"


async def run_set(pg: Postgres, name: str, corpus: Path, embedder: str, weights: list[Fusion]) -> EvalReport:
    db = await Database.connect(pg.url(await pg.create_database()), min_size=1, max_size=4)
    try:
        kb = KnowledgeBase(db, make_embedder(embedder), fusion=weights[0])
        await kb.ensure_index()
        started = time.perf_counter()
        report = await ingest_paths(kb, [corpus], course=name, show_progress=False)
        took = time.perf_counter() - started
        print(f"\n== {name}: {report.added} documents, {report.chunks} chunks in {took:.1f} s "
              f"({len(report.failed)} failed)")
        questions = read_questions(EVALSETS / name / "questions.jsonl")
        result = await run_eval(kb, questions, course=name, extra=weights[1:])
        print(result.render())
        print(f"hybrid searches whose full-text query ran past its budget ({kb.fusion.text_budget_ms} ms) and were "
              f"ranked by vectors alone: {kb.text_over_budget}; load average {os.getloadavg()[0]:.1f}")
        return result
    finally:
        await db.close()


def markdown(reports: dict[str, EvalReport]) -> str:
    rows = ["| embedder | retriever | set | recall@1 | recall@5 | recall@10 | MRR@10 | nDCG@10 | p50 ms | p95 ms |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, report in reports.items():
        for s in report.scores:
            rows.append(f"| {report.embedder} | {s.retriever} | {name} ({s.questions} q) | {s.recall[1]:.2f} | "
                        f"{s.recall[5]:.2f} | {s.recall[10]:.2f} | {s.mrr:.3f} | {s.ndcg:.3f} | {s.p50_ms:.1f} | "
                        f"{s.p95_ms:.1f} |")
    return "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=sorted(SETS), action="append", help="default: every set")
    parser.add_argument("--embedder", default="hashing")
    parser.add_argument("--json", type=Path, help="also write every set's report (with each question's outcome) here")
    parser.add_argument("--weights", default="1:1,1:0.5,1:0.25,0.5:1",
                        help="hybrid weights to measure, vector:text, comma-separated (the first is 'configured')")
    args = parser.parse_args()
    weights = [parse_weights(w, 60) for w in args.weights.split(",") if w.strip()]
    sets = args.set or sorted(SETS)
    reports: dict[str, EvalReport] = {}
    pg = await asyncio.to_thread(Postgres.start)
    try:
        with tempfile.TemporaryDirectory(prefix="studyhall-evalsets-") as tmp:
            for name in sets:
                corpus = Path(tmp) / name
                SETS[name](corpus)
                reports[name] = await run_set(pg, name, corpus, args.embedder, weights)
    finally:
        await asyncio.to_thread(pg.stop)
    print("\n" + markdown(reports))
    if args.json:
        args.json.write_bytes(orjson.dumps({name: r.as_dict() for name, r in reports.items()}, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    asyncio.run(main())
