"""What a PDF decompression bomb costs the extractor, with and without the document caps.

    .venv/bin/python bench/pdf_bomb.py [--chars 12000000] [--pages 1] [--no-caps]

Builds a PDF whose page content streams are a highly compressible run of text-show
operators (Flate-compressed: 12 M characters of text fit in about 49 KB), then extracts it
with `rag.extract.extract` under the default caps (settings.knowledge: STUDYHALL_DOC_MAX_*) or none,
and prints the file size, the outcome, the time and the peak of traced allocations.
Without caps a 12 M character bomb takes minutes: try `--chars 1000000 --no-caps` first.
"""

from __future__ import annotations

import argparse
import io
import time
import tracemalloc

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from handlers.settings import KnowledgeSettings
from rag.extract import DocumentLimits, DocumentTooLarge, extract
from server.factories import document_limits


def bomb(chars: int, pages: int) -> bytes:
    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica"),
    }))
    line = b"(" + b"A" * 200 + b") Tj T*\n"
    body = b"BT /F1 10 Tf 12 TL 40 760 Td\n" + line * max(1, chars // pages // 200) + b"ET\n"
    for _ in range(pages):
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        stream = DecodedStreamObject()
        stream.set_data(body)
        page[NameObject("/Contents")] = writer._add_object(stream.flate_encode(level=9))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=12_000_000)
    parser.add_argument("--pages", type=int, default=1)
    parser.add_argument("--no-caps", action="store_true")
    args = parser.parse_args()
    data = bomb(args.chars, args.pages)
    limits = DocumentLimits() if args.no_caps else document_limits(KnowledgeSettings())
    tracemalloc.start()
    started = time.perf_counter()
    try:
        outcome = f"extracted {len(extract(data, 'bomb.pdf', limits).text):,} characters"
    except DocumentTooLarge as exc:
        outcome = f"refused: {exc}"
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    print(f"{len(data):,} bytes, {args.pages} page(s), caps {'off' if args.no_caps else 'default'}: "
          f"{outcome}; {elapsed:.2f} s, peak {peak:.1f} MiB")


if __name__ == "__main__":
    main()
