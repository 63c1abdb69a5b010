"""Bulk ingest of files and folders (the `studyhall ingest PATH...` command).

Files in a folder whose type is not supported are not silently passed over: they are
listed in the report (`unsupported`), so an operator sees what the tutor will not know.
With a `PublicLinks`, each document's `source` is the public address of the page (base
URL + the file's path inside the folder given), which citations carry to students;
without one it is the local path, as before. A document stored before (same text) gets
the link too, so adding `--base-url` to a second run fixes the citations of the first.
"""
from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

from tqdm import tqdm

from rag.extract import SUPPORTED_SUFFIXES, DocumentError, DocumentTooLarge
from rag.retrieval import EmbeddedDocument, KnowledgeBase, PreparedFile
from storage import documents as store

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What an ingest run did; `failed` maps a path to the reason, `unsupported` lists the
    files of a walked folder whose type cannot be ingested."""

    added: int = 0
    duplicates: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    chunks: int = 0
    unsupported: list[str] = field(default_factory=list)
    relinked: int = 0  # documents already stored whose source became the public link

    @property
    def seen(self) -> int:
        return self.added + self.duplicates + len(self.failed)


@dataclass(frozen=True)
class FoundFile:
    """A file to ingest and its path relative to the folder it was found in (its name
    when it was given on its own): the part a public link is made of."""

    path: Path
    relative: PurePosixPath


@dataclass(frozen=True)
class Scan:
    files: list[FoundFile]
    unsupported: list[Path]


class PublicLinks:
    """Turns a file's relative path into its public URL under `base_url`.

    `https://docs.python.org/3.11/` + `library/venv.html` →
    `https://docs.python.org/3.11/library/venv.html`. The base must be an absolute http(s)
    URL: a citation link that a browser cannot open is worse than none."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"--base-url must be an absolute http(s) URL without ?query or #fragment: {base_url!r}")
        self.base = base_url if base_url.endswith("/") else base_url + "/"

    def url(self, relative: PurePosixPath) -> str:
        return self.base + quote(relative.as_posix(), safe="/~-._")


def _excluded(relative: PurePosixPath, exclude: Sequence[str]) -> bool:
    text = relative.as_posix()
    return any(fnmatch.fnmatchcase(text, pattern) or fnmatch.fnmatchcase(relative.name, pattern)
               for pattern in exclude)


def scan(paths: Iterable[str | Path], exclude: Sequence[str] = ()) -> Scan:
    """Supported files among `paths` (folders walked recursively, sorted; hidden files and
    folders and `exclude` glob matches skipped), and the unsupported files met in folders.
    A file named on its own is always tried, so its failure is reported. `FileNotFoundError`
    for a path that does not exist."""
    files: list[FoundFile] = []
    unsupported: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                relative = PurePosixPath(child.relative_to(path).as_posix())
                if any(part.startswith(".") for part in relative.parts) or not child.is_file():
                    continue
                if _excluded(relative, exclude):
                    continue
                if child.suffix.lower() in SUPPORTED_SUFFIXES:
                    files.append(FoundFile(child, relative))
                else:
                    unsupported.append(child)
        elif path.is_file():
            files.append(FoundFile(path, PurePosixPath(path.name)))
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return Scan(files, unsupported)


async def ingest_paths(
    kb: KnowledgeBase,
    paths: Iterable[str | Path],
    course: str | None = None,
    *,
    show_progress: bool = True,
    links: PublicLinks | None = None,
    exclude: Sequence[str] = (),
    prefetch: bool = True,
) -> IngestReport:
    """Ingest every supported file under `paths`; duplicates are counted, not stored twice.

    A file that cannot be read, is not text although named so, or expands past the
    knowledge base's caps, is reported in `failed` and the run goes on. `prefetch=False`
    runs the stages one after the other (the benchmark's baseline).
    """
    found = scan(paths, exclude)
    report = IngestReport(unsupported=[str(p) for p in found.unsupported])
    # Three stages overlap: the next file is read, extracted and chunked in a worker
    # thread (pure Python, one core) and the previous file's rows are inserted (PostgreSQL
    # works in its own process: the HNSW and GIN index updates) while this file is
    # embedded on both cores. Without the overlap the embedder idled during each insert
    # (bench/ingest_bench.py --compare-prefetch, docs/performance.md "Eighth session").
    ahead: asyncio.Task[PreparedFile] | None = None
    inserting: asyncio.Task[None] | None = None

    async def insert(source: str | None, ready: EmbeddedDocument | store.DocumentRow) -> None:
        if isinstance(ready, store.DocumentRow):
            document, created = ready, False
        else:
            document, created = await kb.insert_embedded(ready)
        if created:
            report.added += 1
            report.chunks += document.chunk_count
            return
        report.duplicates += 1
        if source is not None and document.source != source:  # ingested before without --base-url
            async with kb.db.transaction() as conn:
                report.relinked += await store.set_document_source(conn, document.id, source)

    with tqdm(found.files, unit="file", desc="ingest", disable=not show_progress) as bar:
        try:
            for n, item in enumerate(bar):
                bar.set_postfix_str(item.path.name[-40:])
                source = links.url(item.relative) if links is not None else None
                current = ahead if ahead is not None else asyncio.ensure_future(kb.prepare_file(item.path))
                ahead = None
                try:
                    prepared = await current
                    if prefetch and n + 1 < len(found.files):
                        ahead = asyncio.ensure_future(kb.prepare_file(found.files[n + 1].path))
                    ready = await kb.embed_prepared(prepared, course=course, source=source)
                except (DocumentError, OSError) as exc:
                    too_large = isinstance(exc, DocumentTooLarge)
                    report.failed[str(item.path)] = f"too large, skipped ({exc})" if too_large else str(exc)
                    log.warning("ingest failed", extra={"path": str(item.path), "error": str(exc)})
                    continue
                if inserting is not None:
                    await inserting
                inserting = None
                if prefetch:
                    inserting = asyncio.ensure_future(insert(source, ready))
                else:
                    await insert(source, ready)
            if inserting is not None:
                await inserting
        except BaseException:
            for task in (ahead, inserting):
                if task is not None:
                    task.cancel()
            raise
    return report
