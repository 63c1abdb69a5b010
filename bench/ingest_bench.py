"""Import benchmark: how much of a documentation page each HTML extractor keeps, how fast,
and ingestion chunks/s through the app's whole pipeline.

    apt-get install -y python3.11-doc postgresql-doc-15      # the two corpora
    .venv/bin/python bench/ingest_bench.py [--pages 40] [--part extract|ingest|both]
        [--embedder hashing|sentence-transformers|...] [--python-docs DIR] [--pg-docs DIR]

Pages are a fixed sample (every n-th page of each manual in name order), the same every run.

Extract. For each page the reference is the content region the generator marks (Sphinx:
`role="main"`; DocBook: the body without its navheader/navfooter), read as plain text with
lxml; navigation, sidebars and footers are outside it. Per extractor (trafilatura's
markdown, readability-lxml's summary, and Studyhall's `rag.extract.extract`):
  * recall     share of the reference's words (as a multiset) that the output keeps;
  * precision  share of the output's words that are in the reference (the rest is navigation,
               footers or markup debris such as markdown escapes);
  * headings   share of the reference's <h1>-<h6> that come out as `#` lines;
  * code       share of the reference's indented code lines that come out whole, indented;
  * ms/page    median extraction time.

Ingest. The sampled pages go through `rag.ingest.ingest_paths` into a fresh embedded
PostgreSQL (tests/services.py), as `studyhall ingest` does: extract, chunk, embed, insert.
Printed: chunks/s for the whole run (wall clock, and per CPU-second of this process, which
a busy shared machine distorts less), and extraction and chunking per page measured on
their own. `--embedder` is any `STUDYHALL_EMBEDDER` kind that works offline. For a
before/after comparison, run this script from a checkout of the older commit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.chunking import chunk_text  # noqa: E402
from rag.extract import extract  # noqa: E402

PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")
PG_DOCS = Path("/usr/share/doc/postgresql-doc-15/html")
_WORD = re.compile(r"\w+")
_MARKS = str.maketrans("", "", "`*_¶\\")


def sample(root: Path, pattern: str, n: int) -> list[Path]:
    """Every k-th page, in name order, so the sample is the same every run."""
    pages = sorted(p for p in root.glob(pattern) if not any(part.startswith("_") for part in p.relative_to(root).parts))
    step = max(1, len(pages) // n)
    return pages[::step][:n]


def reference(html: str) -> tuple[str, list[str], list[str]]:
    """The page's marked content region: its text, its headings, its indented code lines."""
    import lxml.html

    tree = lxml.html.fromstring(html.encode("utf-8"))
    found = tree.xpath('//*[@role="main"]')
    region = found[0] if found else tree.body
    for junk in region.xpath('.//div[@class="navheader" or @class="navfooter" or @class="toc"]'
                             '|.//a[@class="headerlink"]|.//script|.//style'):
        junk.drop_tree()
    headings = [" ".join(h.text_content().translate(_MARKS).split()) for h in region.xpath(".//h1|.//h2|.//h3|.//h4|.//h5|.//h6")]
    code = [line.rstrip() for pre in region.xpath(".//pre") for line in pre.text_content().split("\n")
            if line[:1] in (" ", "\t") and line.strip()]
    return region.text_content(), [h for h in headings if h], code


def words(text: str) -> Counter[str]:
    return Counter(w.lower() for w in _WORD.findall(text))


def by_trafilatura(html: str) -> str:
    import trafilatura

    return trafilatura.extract(html, output_format="markdown", include_formatting=True, include_tables=True,
                               include_comments=False, deduplicate=False) or ""


def by_readability(html: str) -> str:
    import lxml.html
    from readability import Document

    from rag.extract import normalize_text
    from rag.html import prune, render, strip_xml_declaration

    region = lxml.html.document_fromstring(Document(strip_xml_declaration(html)).summary(html_partial=True))
    prune(region)
    return normalize_text(render(region))


def by_studyhall(html: str) -> str:
    return extract(html, "page.html").text


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "trafilatura": by_trafilatura, "readability": by_readability, "studyhall": by_studyhall,
}


def score(html: str, text: str) -> tuple[float, float, float, float]:
    ref_text, headings, code = reference(html)
    ref, out = words(ref_text), words(text)
    kept = sum((ref & out).values())
    recall = kept / max(1, sum(ref.values()))
    precision = kept / max(1, sum(out.values()))
    # Markdown's inline marks and a permalink's pilcrow do not make a heading wrong.
    heading_lines = {" ".join(line.lstrip("#").translate(_MARKS).split()) for line in text.split("\n")
                     if line.startswith("#")}
    heading_share = sum(h in heading_lines for h in headings) / len(headings) if headings else 1.0
    out_lines = {line.rstrip() for line in text.split("\n")}
    code_share = sum(line in out_lines for line in code) / len(code) if code else 1.0
    return recall, precision, heading_share, code_share


def extract_part(corpora: dict[str, list[Path]]) -> None:
    extractors = dict(EXTRACTORS)
    try:
        import trafilatura  # noqa: F401
    except ImportError:
        print("trafilatura is not installed (pip install trafilatura): its row is left out")
        del extractors["trafilatura"]
    print(f"{'corpus':<10} {'extractor':<12} {'recall':>7} {'precision':>9} {'headings':>8} {'code':>6} {'ms/page':>8}")
    for corpus, pages in corpora.items():
        htmls = [p.read_text(encoding="utf-8", errors="replace") for p in pages]
        for name, fn in extractors.items():
            fn(htmls[0])  # imports and caches out of the timing
            scores, times = [], []
            for html in htmls:
                started = time.perf_counter()
                text = fn(html)
                times.append((time.perf_counter() - started) * 1000)
                scores.append(score(html, text))
            cols = [statistics.mean(s[i] for s in scores) for i in range(4)]
            print(f"{corpus:<10} {name:<12} {cols[0]:>7.3f} {cols[1]:>9.3f} {cols[2]:>8.3f} {cols[3]:>6.3f} "
                  f"{statistics.median(times):>8.1f}")


async def ingest_part(
    corpora: dict[str, list[Path]], embedder_kind: str, compare_prefetch: bool = False, compare_spinning: bool = False,
) -> None:
    from rag.embeddings import make_embedder
    from tests.services import Postgres

    pg = await asyncio.to_thread(Postgres.start)
    try:
        for corpus, pages in corpora.items():
            extract_ms, extract_cpu, chunk_cpu, n_chunks = [], 0.0, 0.0, 0
            for page in pages:
                data = page.read_bytes()
                started, cpu = time.perf_counter(), time.process_time()
                text = extract(data, page.name).text
                extract_ms.append((time.perf_counter() - started) * 1000)
                extract_cpu += time.process_time() - cpu
                cpu = time.process_time()
                n_chunks += len(chunk_text(text))
                chunk_cpu += time.process_time() - cpu
            n = len(pages)
            embedder = make_embedder(embedder_kind)
            if compare_spinning:  # onnxruntime's threads spinning while idle (its default) or not: alternated
                variants = {"spinning": make_embedder(embedder_kind, spin=True), "no spinning": embedder}
                for label in ("spinning", "no spinning", "spinning", "no spinning"):
                    report, took, took_cpu = await ingest_once(pg, variants[label], pages, True)
                    print(f"{corpus}: {label:<11}: {report.chunks} chunks in {took:.1f} s = "
                          f"{report.chunks / took:.1f} chunks/s ({report.chunks / took_cpu:.1f} per CPU-second); "
                          f"load average {os.getloadavg()[0]:.1f}", flush=True)
                continue
            if compare_prefetch:  # the next file extracted while this one embeds, or not: alternated, one process
                for prefetch in (False, True, False, True):
                    report, took, took_cpu = await ingest_once(pg, embedder, pages, prefetch)
                    print(f"{corpus}: prefetch {'on ' if prefetch else 'off'}: {report.chunks} chunks in {took:.1f} s = "
                          f"{report.chunks / took:.1f} chunks/s ({report.chunks / took_cpu:.1f} per CPU-second); "
                          f"load average {os.getloadavg()[0]:.1f}")
                continue
            report, took, took_cpu = await ingest_once(pg, embedder, pages, True)
            print(f"{corpus}: {n} pages, {report.chunks} chunks in {took:.1f} s = {report.chunks / took:.1f} chunks/s "
                  f"with {embedder_kind} (this process's CPU: {took_cpu:.1f} s = {report.chunks / took_cpu:.1f} "
                  f"chunks per CPU-second); extraction {statistics.median(extract_ms):.1f} ms/page median, "
                  f"{1000 * extract_cpu / n:.1f} CPU-ms/page; chunking {1000 * chunk_cpu / n:.1f} CPU-ms/page; "
                  f"{len(report.failed)} failed")
    finally:
        await asyncio.to_thread(pg.stop)


async def ingest_once(pg: Any, embedder: Any, pages: list[Path], prefetch: bool) -> tuple[Any, float, float]:
    """One ingest of `pages` into a fresh database: (report, wall seconds, CPU seconds)."""
    from rag.ingest import ingest_paths
    from rag.retrieval import KnowledgeBase
    from storage.db import Database

    name = await pg.create_database()
    db = await Database.connect(pg.url(name), min_size=1, max_size=4)
    try:
        kb = KnowledgeBase(db, embedder)
        await kb.ensure_index()
        started, cpu = time.perf_counter(), time.process_time()
        report = await ingest_paths(kb, pages, show_progress=False, prefetch=prefetch)
        return report, time.perf_counter() - started, time.process_time() - cpu
    finally:
        await db.close()
        await pg.drop_database(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=40, help="pages sampled from each manual")
    parser.add_argument("--part", choices=("extract", "ingest", "both"), default="both")
    parser.add_argument("--embedder", default="hashing", help="the ingest part's embedder (STUDYHALL_EMBEDDER kinds)")
    parser.add_argument("--compare-prefetch", action="store_true",
                        help="ingest each corpus four times, extracting the next file ahead off/on/off/on")
    parser.add_argument("--compare-spinning", action="store_true",
                        help="onnx: ingest each corpus four times, onnxruntime's idle threads spinning on/off/on/off")
    parser.add_argument("--python-docs", type=Path, default=PYTHON_DOCS)
    parser.add_argument("--pg-docs", type=Path, default=PG_DOCS)
    args = parser.parse_args()
    for root, package in ((args.python_docs, "python3.11-doc"), (args.pg_docs, "postgresql-doc-15")):
        if not root.is_dir():
            raise SystemExit(f"{root} not found: apt-get install -y {package} (or pass its folder)")
    corpora = {"python": sample(args.python_docs, "**/*.html", args.pages),
               "postgres": sample(args.pg_docs, "*.html", args.pages)}
    if args.part in ("extract", "both"):
        extract_part(corpora)
    if args.part in ("ingest", "both"):
        asyncio.run(ingest_part(corpora, args.embedder, args.compare_prefetch, args.compare_spinning))


if __name__ == "__main__":
    main()
