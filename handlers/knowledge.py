"""The knowledge base as the app and the command line use it: add, list, delete and search
documents, and the `ingest` / `reindex` commands (server/factories.py builds the knowledge
base from `settings.knowledge`; the app installs it, the commands are handed one).

The storage, chunking, embedding and search themselves live in `rag/` (KnowledgeBase);
this module adds who may do what, error mapping and the audit trail.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path, PurePath
from typing import Any
from uuid import UUID

import openai
from tqdm import tqdm

from handlers.core import Core
from handlers.errors import ApiError
from rag.embeddings import EmbedderUnavailable
from rag.extract import SUPPORTED_SUFFIXES, DocumentError, DocumentTooLarge
from rag.ingest import PublicLinks, ingest_paths
from rag.retrieval import KnowledgeBase, SearchResult
from storage import audit
from storage.records import Role

log = logging.getLogger(__name__)

EDITOR_ROLES = (Role.MENTOR, Role.AGENT, Role.ADMIN)
MAX_K = 50


def kb_of(core: Core) -> KnowledgeBase:
    """The app's knowledge base (built at startup by server/assembly.py)."""
    kb = core.kb
    if kb is None:
        raise ApiError("unavailable", "The knowledge base is not available.")
    return kb


async def check_index(kb: KnowledgeBase) -> int:
    """Startup check: the vector indexes exist; returns chunks awaiting reindex.

    After a change of embedding model, search goes on with the previous model's vectors
    until `studyhall reindex` has embedded every chunk with the new one: say so."""
    await kb.ensure_index()
    active = await kb.active_model()
    pending = await kb.pending_reindex()
    if active.model != kb.embedder.name:
        log.warning(
            "search uses the previous embedding model until `studyhall reindex` has embedded every chunk "
            "with the configured one",
            extra={"active_embedder": active.model, "embedder": kb.embedder.name, "pending_chunks": pending},
        )
    elif pending:
        log.warning(
            "chunks embedded by another model are invisible to vector search until `studyhall reindex`",
            extra={"pending_chunks": pending, "embedder": kb.embedder.name},
        )
    return pending


def _embedder_failed(exc: Exception) -> ApiError:
    log.warning("embedder failed", extra={"error": str(exc)})
    return ApiError("unavailable", "The embedding service is unavailable; try again later.")


async def add_document(
    core: Core,
    actor_id: UUID | None,
    *,
    title: str | None,
    content: str | None = None,
    file: bytes | None = None,
    filename: str | None = None,
    source: str | None = None,
    language: str | None = None,
    course: str | None = None,
    ip: str | None = None,
    audit_extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Store text or an uploaded file; returns (document, created). Same text twice → created False.
    `actor_id` is the staff member who added it (None: an app's API key, which names itself
    in `audit_extra`)."""
    kb = kb_of(core)
    try:
        if file is not None:
            document, created = await kb.ingest_file(
                file, filename, title=title, source=source, language=language, course=course,
                created_by=actor_id,
            )
        else:
            document, created = await kb.ingest_text(
                title, content or "", source=source, language=language, course=course, created_by=actor_id,
            )
    except DocumentTooLarge as exc:
        raise ApiError("too_large", f"The document is too large: {exc}.") from None
    except DocumentError as exc:
        raise ApiError("bad_request", str(exc)) from None
    except (openai.OpenAIError, EmbedderUnavailable) as exc:
        raise _embedder_failed(exc) from None
    if created:
        async with core.db.connection() as conn:
            await audit.record(
                conn, "document.create", actor_id=actor_id, target_type="document", target_id=document.id, ip=ip,
                details={**(audit_extra or {}), "title": document.title, "course": document.course,
                         "chunks": document.chunk_count},
            )
    return document.as_dict(), created


async def list_documents(core: Core, *, course: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
    rows = await kb_of(core).list_documents(course=course, limit=limit, offset=offset)
    return [d.as_dict() for d in rows]


async def get_document(core: Core, document_id: UUID) -> dict[str, Any]:
    document = await kb_of(core).get_document(document_id, with_content=True)
    if document is None:
        raise ApiError("not_found", "No such document.")
    return document.as_dict()


async def delete_document(
    core: Core, actor_id: UUID | None, document_id: UUID, *, ip: str | None = None,
    audit_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    kb = kb_of(core)
    document = await kb.get_document(document_id)
    if document is None or not await kb.delete(document_id):
        raise ApiError("not_found", "No such document.")
    async with core.db.connection() as conn:
        await audit.record(
            conn, "document.delete", actor_id=actor_id, target_type="document", target_id=document_id,
            ip=ip, details={**(audit_extra or {}), "title": document.title},
        )
    return document.as_dict()


async def search(core: Core, q: str, *, k: int = 5, course: str | None = None) -> list[SearchResult]:
    if not q.strip():
        raise ApiError("bad_request", "q must not be empty.")
    if not 1 <= k <= MAX_K:
        raise ApiError("bad_request", f"k must be between 1 and {MAX_K}.")
    try:
        return await kb_of(core).search(q, k=k, course=course)
    except (openai.OpenAIError, EmbedderUnavailable) as exc:
        raise _embedder_failed(exc) from None


# ---- command line -------------------------------------------------------------------

class IngestExit(IntEnum):
    """`studyhall ingest` exit statuses (docs/tutor.md): the most serious case wins."""

    OK = 0  # every file stored, or already stored
    FAILED = 1  # some files could not be stored (not text, unreadable, empty, too large)
    USAGE = 2  # a path does not exist, or --base-url is not an http(s) URL
    UNSUPPORTED = 3  # everything readable was stored, but a folder held files of unsupported types


SHOW_UNSUPPORTED = 50


def _print_unsupported(paths: list[str]) -> None:
    by_type = Counter(PurePath(p).suffix.lower() or "(no extension)" for p in paths)
    kinds = ", ".join(f"{suffix} {n}" for suffix, n in by_type.most_common())
    print(f"skipped {len(paths)} file(s) of unsupported types ({kinds}); "
          f"supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}", file=sys.stderr)
    for path in paths[:SHOW_UNSUPPORTED]:
        print(f"unsupported: {path}", file=sys.stderr)
    if len(paths) > SHOW_UNSUPPORTED:
        print(f"… and {len(paths) - SHOW_UNSUPPORTED} more", file=sys.stderr)


async def ingest_paths_command(
    kb: KnowledgeBase, paths: list[Path], course: str | None, *, base_url: str | None = None,
    exclude: Sequence[str] = (),
) -> int:
    """`studyhall ingest PATH…`; returns an `IngestExit` status."""
    try:
        links = PublicLinks(base_url) if base_url else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return IngestExit.USAGE
    await kb.ensure_index()
    try:
        report = await ingest_paths(kb, paths, course, show_progress=sys.stderr.isatty(), links=links,
                                    exclude=exclude)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return IngestExit.USAGE
    relinked = f", {report.relinked} of them now linked to {links.base}" if links and report.relinked else ""
    print(f"added {report.added} document(s) ({report.chunks} chunks), {report.duplicates} already stored{relinked}")
    for path, reason in report.failed.items():
        print(f"failed: {path}: {reason}", file=sys.stderr)
    if report.unsupported:
        _print_unsupported(report.unsupported)
    if report.failed:
        return IngestExit.FAILED
    return IngestExit.UNSUPPORTED if report.unsupported else IngestExit.OK


async def reindex_command(kb: KnowledgeBase) -> int:
    """`studyhall reindex`: embed every chunk with the configured model, then switch search
    to it (the previous model's vectors serve until then)."""
    before = await kb.active_model()
    total = await kb.pending_reindex()
    with tqdm(total=total, unit="chunk", desc="reindex", disable=not sys.stderr.isatty()) as bar:

        def progress(done: int, of: int) -> None:
            bar.total = of
            bar.update(done - bar.n)

        try:
            done = await kb.reindex(progress)
        except (openai.OpenAIError, EmbedderUnavailable) as exc:
            print(f"error: the embedder failed: {exc}; run reindex again to resume", file=sys.stderr)
            return 1
    print(f"re-embedded {done} chunk(s) with {kb.embedder.name}")
    if before.model != kb.embedder.name:
        print(f"search switched from {before.model} to {kb.embedder.name}")
    return 0
