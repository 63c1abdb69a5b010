"""A 100k-chunk corpus of distinct, real text for the retrieval bench, built offline.

Why: the bench's old 100k set mixed ~373 real chunks into 100k synthetic ones, so every
question word matched hundreds of identical rows and the full-text query ran into its
budget on a quarter of the questions; no real corpus looks like that. This one is made of
documents found on the machine, chunked and embedded as `studyhall ingest` does:

* PostgreSQL 15's and Python 3.11's HTML manuals (Debian's postgresql-doc-15 and
  python3.11-doc), through the app's extractor (rag/extract.py);
* English man pages (/usr/share/man/man[1-8]), their roff turned into text with `## `
  headings for `.SH`/`.SS`;
* docstrings of the Python packages installed next to this script (read with `ast`, so
  nothing is imported or run): one document per module, a `## name` heading per class or
  function;
* README and .txt files under /usr/share/doc (not changelogs or copyright files).

The manuals come first (the bench's question recipes need their pages), then the other
documents in a seeded shuffle, until `--size` distinct chunks (same text once: chunks are
deduplicated by their whitespace-normalised content). Questions follow the bench's recipes
(bench/retrieval_bench.py) applied to what went in, plus "How do I <purpose>?" from a man
page's NAME line, the same recipe as the manual's SQL command pages. Everything is cached
in `--out` (built once, about half an hour with the onnx embedder on 2 cores; embedding
resumes where it stopped; a corpus embedded only in part is usable, see `load_vectors`):

    .venv/bin/python bench/corpus.py [--out /tmp/studyhall-corpus] [--size 100000] [--embedder onnx]

    chunks.jsonl       one chunk a line: doc, heading_path, content
    documents.jsonl    one document a line: doc, title, source, kind
    questions.json     text, doc, heading (None: any chunk of the doc answers), kind
    vectors-<model>.NNNN.npy  float32, a row per chunk (1,024 a shard), the embedding of
                       `embedding_input(heading_path, content)` as ingestion embeds it
    manifest.json      sizes, per-source counts, the recipe version
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import multiprocessing
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.chunking import chunk_text  # noqa: E402
from rag.extract import DocumentError, extract, normalize_text  # noqa: E402

VERSION = 2  # bump when the recipe changes: a cache of another version is rebuilt
DEFAULT_OUT = Path("/tmp/studyhall-corpus")
PG_DOCS = Path("/usr/share/doc/postgresql-doc-15/html")
PY_DOCS = Path("/usr/share/doc/python3.11/html")
MAN = Path("/usr/share/man")
SHARE_DOC = Path("/usr/share/doc")
_SECTION = re.compile(r"^\d+\.\d+\.\d+\. (?P<title>.+)$")
_PURPOSE = re.compile(r"^(?P<name>[A-Z][A-Za-z_ ]+?) — (?P<purpose>[a-z].+?)\s*$", re.MULTILINE)
_MODULE = re.compile(r"^(?P<name>[\w.]+) — (?P<purpose>.+?)(?: — Python [\d.]+ documentation)?$")
_MAN_NAME = re.compile(r"^\S[^\n]*? [-—] (?P<purpose>[a-z][^\n]{8,}?)\.?$")
QUESTIONS_PER_KIND = 50
# At most this share of the corpus from one family of documents (the manuals excepted):
# Google Cloud's SDK alone installs 16,631 man pages of one template, 43% of an uncapped
# corpus, and a corpus that is mostly one template is no more real than one of repeats.
FAMILY_SHARE = 0.04


@dataclass(frozen=True)
class Source:
    """A document to read: `kind` says how (html, man, py, text)."""

    kind: str
    path: str


@dataclass(frozen=True)
class Document:
    doc: int
    title: str
    source: str
    kind: str


@dataclass(frozen=True)
class CorpusChunk:
    doc: int
    heading_path: list[str]
    content: str


@dataclass(frozen=True)
class CorpusQuestion:
    text: str
    doc: int
    heading: str | None  # None: any chunk of the document answers it
    kind: str


# ---------------------------------------------------------------- reading sources

_ROFF_NAMED = {"em": "—", "en": "–", "aq": "'", "dq": '"', "bu": "•", "lq": '"', "rq": '"', "oq": "'",
               "cq": "'", "co": "©", "mi": "-", "hy": "-", "ga": "`", "ti": "~", "ha": "^", "rs": "\\",
               "<=": "≤", ">=": "≥", "->": "→", "mu": "×"}
_ROFF_ESCAPE = re.compile(r"\\(?:f(?:\[[^\]]*\]|\(..|.)|s[+-]?\d+|\*(?:\[[^\]]*\]|\(..|.)|\((..)|\[([^\]]*)\]|(.))")


def _roff_escape(m: re.Match[str]) -> str:
    named = m.group(1) or m.group(2)
    if named is not None:
        return _ROFF_NAMED.get(named, "")
    char = m.group(3)
    if char is None:
        return ""  # a font, size or string
    return {"-": "-", "e": "\\", "&": "", "|": "", "^": "", " ": " ", "0": " ", "c": "", "%": "", "(": ""}.get(char, char)


def _roff_args(rest: str) -> str:
    return " ".join(a.strip('"') for a in re.findall(r'"[^"]*"|\S+', rest))


def man_to_text(roff: str) -> str:
    """A man page's roff as plain text: `.SH`/`.SS` become `##`/`###` headings, paragraph
    macros blank lines, font macros their words; other requests and macro definitions go."""
    out: list[str] = []
    skipping = False
    for line in roff.splitlines():
        if skipping:
            skipping = line.strip() != ".."
            continue
        if line.startswith((".", "'")):
            request, _, rest = line[1:].strip().partition(" ")
            if request in ("de", "de1", "ig"):
                skipping = True
            elif request in ("SH", "SS"):
                heading = _ROFF_ESCAPE.sub(_roff_escape, _roff_args(rest)).strip()
                out.append(f"\n{'##' if request == 'SH' else '###'} {heading.title() if heading.isupper() else heading}\n")
            elif request in ("PP", "LP", "P", "sp", "TP", "br", "Sp"):
                out.append("")
            elif request in ("IP", "B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB", "It", "Nm", "Nd"):
                text = _roff_args(rest) if request != "IP" else _roff_args(rest).split(" ")[0]
                if request in ("BR", "RB", "IR", "RI", "BI", "IB"):
                    text = text.replace(" ", "")if len(rest.split()) <= 2 and "," not in rest else text
                out.append(_ROFF_ESCAPE.sub(_roff_escape, text))
            continue
        out.append(_ROFF_ESCAPE.sub(_roff_escape, line))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out))


def docstrings_to_text(source: str, module: str) -> str:
    """A module's docstrings, its own first, then one `## name` section per documented
    class, function and method (in file order)."""
    tree = ast.parse(source)
    parts = [f"# {module}"]
    if (doc := ast.get_docstring(tree)) is not None:
        parts.append(doc)

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{node.name}"
                if (doc := ast.get_docstring(node)) is not None and len(doc) >= 40:
                    parts.append(f"## {name}\n\n{doc}")
                if isinstance(node, ast.ClassDef):
                    walk(node.body, f"{name}.")

    walk(tree.body, "")
    return "\n\n".join(parts) if len(parts) > 2 or (len(parts) == 2 and len(parts[1]) >= 200) else ""


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def read_source(src: Source) -> tuple[str, str] | None:
    """(title, normalised text) of a source, or None if it has no usable text."""
    path = Path(src.path)
    try:
        if src.kind == "html":
            extracted = extract(path.read_bytes(), path.name)
            return extracted.title, extracted.text
        if src.kind == "man":
            text = normalize_text(man_to_text(_read_text(path)))
            return path.name.split(".")[0] + f"({path.parent.name.removeprefix('man')})", text
        if src.kind == "py":
            module = ".".join(path.with_suffix("").parts[path.parts.index("site-packages") + 1:])
            return module, normalize_text(docstrings_to_text(path.read_text(encoding="utf-8"), module))
        text = normalize_text(_read_text(path))
        return f"{path.parent.name}: {path.name}", text
    except (DocumentError, OSError, SyntaxError, ValueError, UnicodeDecodeError, EOFError):
        return None


def family(src: Source) -> str:
    """What the per-family cap counts by: a man page's name up to its first `-`, `_` or
    `.` (gcloud, git, systemd), a module's top package, a /usr/share/doc folder."""
    path = Path(src.path)
    if src.kind == "html":
        return "manuals"
    if src.kind == "man":
        return "man:" + re.split(r"[-_.:]", path.name)[0]
    if src.kind == "py":
        return "py:" + path.parts[path.parts.index("site-packages") + 1]
    return "doc:" + path.relative_to(SHARE_DOC).parts[0]


def _chunked(src: Source) -> tuple[Source, str, list[tuple[list[str], str]]] | None:
    """Worker: a source read and chunked as ingestion chunks it."""
    read = read_source(src)
    if read is None or len(read[1]) < 200:
        return None
    title, text = read
    return src, title, [(c.heading_path, c.content) for c in chunk_text(text)]


def sources(site_packages: Path, seed: int) -> Iterator[Source]:
    """The manuals first (sorted), then everything else in a seeded shuffle."""
    for path in sorted(PG_DOCS.glob("*.html")):
        yield Source("html", str(path))
    py_pages = [p for p in sorted(PY_DOCS.rglob("*.html"))
                if "genindex" not in p.name and p.name not in ("search.html", "py-modindex.html")]
    for path in py_pages:
        yield Source("html", str(path))
    rest: list[Source] = []
    for section in range(1, 9):
        folder = MAN / f"man{section}"
        rest += [Source("man", str(p)) for p in sorted(folder.glob("*")) if p.is_file() and not p.is_symlink()]
    rest += [Source("py", str(p)) for p in sorted(site_packages.rglob("*.py"))
             if "/tests/" not in str(p) and "/test/" not in str(p)]
    skip = re.compile(r"changelog|copyright|news|license|authors|thanks|todo", re.IGNORECASE)
    rest += [Source("text", str(p)) for p in sorted(SHARE_DOC.rglob("*"))
             if p.is_file() and not p.is_symlink() and re.search(r"(^README|\.txt)(\.gz)?$|\.md$", p.name)
             and not skip.search(p.name) and "/html/" not in str(p)]
    random.Random(seed).shuffle(rest)
    yield from rest


# ---------------------------------------------------------------- questions

def questions_for(doc: Document, text_chunks: list[tuple[list[str], str]]) -> list[CorpusQuestion]:
    """The bench's recipes (bench/retrieval_bench.py), per document."""
    path = Path(doc.source)
    out: list[CorpusQuestion] = []
    first = "\n".join(c for _, c in text_chunks[:2])[:2000]
    if doc.kind == "html" and path.parent == PG_DOCS:
        if path.name.startswith("sql-"):
            if m := _PURPOSE.search(first):
                out.append(CorpusQuestion(f"How do I {m['purpose'].rstrip('.')}?", doc.doc, None, "postgres reference"))
            return out
        for headings, _ in text_chunks:
            if headings and (m := _SECTION.match(headings[-1])) and len(m["title"].split()) >= 2:
                out.append(CorpusQuestion(f"How does {m['title']} work?", doc.doc, headings[-1], "postgres section"))
    elif doc.kind == "html" and path.parent.name == "library" and (m := _MODULE.match(doc.title)):
        purpose = m["purpose"].rstrip(".")
        out.append(CorpusQuestion(f"Which module is for {purpose[0].lower()}{purpose[1:]}?", doc.doc, None,
                                  "python module"))
    elif doc.kind == "html" and path.parent.name == "faq":
        for headings, _ in text_chunks:
            if headings and headings[-1].rstrip(" ¶").endswith("?"):
                out.append(CorpusQuestion(headings[-1].rstrip(" ¶"), doc.doc, headings[-1], "python faq"))
    elif doc.kind == "man":
        for headings, content in text_chunks:
            if headings and headings[-1] == "Name":
                line = content.split("\n## ", 1)[0].replace("## Name", "").strip().split("\n")[0]
                if m := _MAN_NAME.match(line):
                    out.append(CorpusQuestion(f"How do I {m['purpose']}?", doc.doc, None, "man page"))
                break
    return out


def pick_questions(found: list[CorpusQuestion], seed: int) -> list[CorpusQuestion]:
    """Questions whose text is unique in the corpus, at most QUESTIONS_PER_KIND a kind (seeded)."""
    counts: dict[str, int] = {}
    for q in found:
        counts[q.text] = counts.get(q.text, 0) + 1
    rng = random.Random(seed)
    out: list[CorpusQuestion] = []
    for kind in sorted({q.kind for q in found}):
        pool = [q for q in found if q.kind == kind and counts[q.text] == 1]
        out += rng.sample(pool, min(QUESTIONS_PER_KIND, len(pool)))
    return out


# ---------------------------------------------------------------- build, embed, load

def build_text(out: Path, size: int, seed: int) -> None:
    """chunks.jsonl, documents.jsonl, questions.json and the manifest (no vectors yet)."""
    site_packages = Path(next(p for p in sys.path if p.endswith("site-packages")))
    seen: set[str] = set()
    docs: list[Document] = []
    chunks: list[CorpusChunk] = []
    found: list[CorpusQuestion] = []
    per_kind: dict[str, int] = {}
    per_family: dict[str, int] = {}
    cap = max(1, int(size * FAMILY_SHARE))
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        for result in pool.imap(_chunked, sources(site_packages, seed), chunksize=8):
            if result is None:
                continue
            src, title, pieces = result
            kept: list[tuple[list[str], str]] = []
            for headings, content in pieces:
                key = hashlib.sha1(" ".join(content.split()).encode()).hexdigest()
                if len(content) >= 40 and key not in seen:
                    seen.add(key)
                    kept.append((headings, content))
            if not kept:
                continue
            fam = family(src)
            room = size - len(chunks) if fam == "manuals" else min(size - len(chunks), cap - per_family.get(fam, 0))
            kept = kept[: max(0, room)]
            if not kept:
                continue
            per_family[fam] = per_family.get(fam, 0) + len(kept)
            doc = Document(len(docs), title, src.path, src.kind)
            docs.append(doc)
            found += questions_for(doc, kept)
            chunks += [CorpusChunk(doc.doc, h, c) for h, c in kept]
            per_kind[src.kind] = per_kind.get(src.kind, 0) + len(kept)
            if len(chunks) >= size:
                pool.terminate()
                break
    if len(chunks) < size:
        raise SystemExit(f"only {len(chunks)} distinct chunks found on this machine, {size} asked")
    questions = pick_questions(found, seed)
    with (out / "chunks.jsonl").open("w") as f:
        for c in chunks:
            f.write(json.dumps(asdict(c), ensure_ascii=False) + "\n")
    with (out / "documents.jsonl").open("w") as f:
        for d in docs:
            f.write(json.dumps(asdict(d), ensure_ascii=False) + "\n")
    (out / "questions.json").write_text(json.dumps([asdict(q) for q in questions], ensure_ascii=False, indent=0))
    manifest = {"version": VERSION, "size": size, "seed": seed, "documents": len(docs), "chunks": len(chunks),
                "chunks_per_kind": per_kind,
                "largest_families": dict(sorted(per_family.items(), key=lambda kv: -kv[1])[:8]), "questions": len(questions),
                "questions_per_kind": {k: sum(q.kind == k for q in questions) for k in sorted({q.kind for q in questions})},
                "chars": sum(len(c.content) for c in chunks), "built_s": round(time.perf_counter() - started, 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"corpus text: {json.dumps(manifest)}", flush=True)


def vectors_slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", model)


def embed(out: Path, embedder_kind: str, shard: int = 1024, limit: int | None = None) -> int:
    """Embed every chunk (the first `limit`), in shards of `shard` (vectors-<model>.NNNN.npy),
    so an interrupted run resumes and a partial one is usable (`load_vectors`); returns how
    many chunks have vectors."""
    import asyncio

    import numpy as np

    from rag.embeddings import make_embedder
    from rag.retrieval import embedding_input

    emb = make_embedder(embedder_kind)
    chunks = load_chunks(out)
    total = min(len(chunks), limit or len(chunks))
    started, done_here = time.perf_counter(), 0
    for first in range(0, total, shard):
        part = out / f"vectors-{vectors_slug(emb.name)}.{first // shard:04d}.npy"
        if part.exists():
            continue
        batch = [embedding_input(c.heading_path, c.content) for c in chunks[first:first + shard]]
        vectors = np.asarray(asyncio.run(emb.embed(batch)), dtype=np.float32)
        np.save(out / "partial.npy", vectors)
        (out / "partial.npy").rename(part)  # a shard is there whole or not at all
        done_here += len(batch)
        print(f"  embedded {first + len(batch)}/{total} ({done_here / (time.perf_counter() - started):.1f} "
              f"chunks/s this run)", flush=True)
    return embedded_count(out, emb.name)


def _shards(out: Path, model: str) -> list[Path]:
    shards = sorted(out.glob(f"vectors-{vectors_slug(model)}.[0-9][0-9][0-9][0-9].npy"))
    return [s for i, s in enumerate(shards) if s.name.endswith(f".{i:04d}.npy")]  # the unbroken prefix


def embedded_count(out: Path, model: str) -> int:
    import numpy as np

    return sum(int(np.load(s, mmap_mode="r").shape[0]) for s in _shards(out, model))


def load_vectors(out: Path, model: str, n: int, seed: int = 3) -> tuple[Any, int]:
    """(n x dim float32 array, how many of them are real embeddings). Chunks past the
    embedded prefix get a stand-in: the normalised 0.7/0.3 mix of two real vectors (the
    old synthetic set's rule), so a partly embedded corpus is still usable for latency;
    the caller reports the split."""
    import numpy as np

    shards = _shards(out, model)
    if not shards:
        raise SystemExit(f"no {model} vectors in {out}: run bench/corpus.py --out {out}")
    real = np.concatenate([np.load(s) for s in shards])[:n]
    if len(real) >= n:
        return real, n
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(real), n - len(real))
    b = rng.integers(0, len(real), n - len(real))
    mixed = 0.7 * real[a] + 0.3 * real[b]
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    return np.concatenate([real, mixed.astype(np.float32)]), len(real)


def load_chunks(out: Path) -> list[CorpusChunk]:
    with (out / "chunks.jsonl").open() as f:
        return [CorpusChunk(**json.loads(line)) for line in f]


def load_documents(out: Path) -> list[Document]:
    with (out / "documents.jsonl").open() as f:
        return [Document(**json.loads(line)) for line in f]


def load_questions(out: Path) -> list[CorpusQuestion]:
    return [CorpusQuestion(**q) for q in json.loads((out / "questions.json").read_text())]


def ready(out: Path, size: int) -> bool:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(manifest.get("version") == VERSION and manifest.get("size") == size)


def build_text_once(out: Path, size: int = 100_000, seed: int = 15) -> None:
    """The corpus' text in `out`, built if missing or of another recipe."""
    out.mkdir(parents=True, exist_ok=True)
    if not ready(out, size):
        for stale in out.glob("*"):
            stale.unlink()
        build_text(out, size, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--embedder", default="onnx")
    parser.add_argument("--text-only", action="store_true", help="build the text, not the vectors")
    parser.add_argument("--embed-limit", type=int, default=None, help="embed only the first N chunks")
    args = parser.parse_args()
    build_text_once(args.out, args.size)
    if not args.text_only:
        done = embed(args.out, args.embedder, limit=args.embed_limit)
        print(f"{done} of {args.size} chunks embedded in {args.out}")


if __name__ == "__main__":
    main()
