"""Bulk ingest of files and folders (the `studyhall ingest PATH...` command)."""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from rag.extract import SUPPORTED_SUFFIXES, DocumentError, DocumentTooLarge
from rag.retrieval import KnowledgeBase

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What an ingest run did; `failed` maps a path to the reason."""

    added: int = 0
    duplicates: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    chunks: int = 0

    @property
    def seen(self) -> int:
        return self.added + self.duplicates + len(self.failed)


def find_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Supported files among `paths`, folders walked recursively (sorted, hidden skipped)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
                if child.is_file() and not hidden and child.suffix.lower() in SUPPORTED_SUFFIXES:
                    yield child
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


async def ingest_paths(
    kb: KnowledgeBase, paths: Iterable[str | Path], course: str | None = None, *, show_progress: bool = True
) -> IngestReport:
    """Ingest every supported file under `paths`; duplicates are counted, not stored twice.

    A file that cannot be read, or expands past the knowledge base's caps, is reported in
    `failed` and the run goes on.
    """
    files = list(find_files(paths))
    report = IngestReport()
    with tqdm(files, unit="file", desc="ingest", disable=not show_progress) as bar:
        for path in bar:
            bar.set_postfix_str(path.name[-40:])
            try:
                document, created = await kb.ingest_file(path, course=course)
            except (DocumentError, OSError) as exc:
                too_large = isinstance(exc, DocumentTooLarge)
                report.failed[str(path)] = f"too large, skipped ({exc})" if too_large else str(exc)
                log.warning("ingest failed", extra={"path": str(path), "error": str(exc)})
                continue
            if created:
                report.added += 1
                report.chunks += document.chunk_count
            else:
                report.duplicates += 1
    return report
