"""The knowledge base on a real PostgreSQL with pgvector: ingest, dedupe, hybrid search,
course filter, delete, reindex, and the HNSW index actually serving vector queries."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from handlers.settings import Settings
from rag.embeddings import ONNX_DEFAULT_NAME, Embedder, EmbedderUnavailable, HashingEmbedder, make_embedder
from rag.extract import EmptyDocument
from rag.ingest import ingest_paths
from rag.retrieval import KnowledgeBase, SearchResult, embedding_input, fuse
from storage import documents as store
from storage.db import Database
from tests.client import Api
from tests.fakellm import FakeLLM

CORPUS = {
    "Photosynthesis": (
        "biology",
        """# Photosynthesis

Plants capture light energy in their chloroplasts. The green pigment chlorophyll absorbs
mostly red and blue light and reflects green, which is why leaves look green.

## The light reactions

In the thylakoid membranes, light splits water molecules. This releases oxygen as a
by-product and produces ATP and NADPH, the energy carriers used later.

## The Calvin cycle

In the stroma, the enzyme RuBisCO fixes carbon dioxide from the air. Using ATP and NADPH,
the cycle builds three-carbon sugars that the plant turns into glucose and starch.
""",
    ),
    "Ohm's law": (
        "physics",
        """# Ohm's law

The current through a conductor is proportional to the voltage across it: V = I × R.
Resistance is measured in ohms.

## Series and parallel circuits

Resistors in series add up: the total resistance is R1 + R2. In parallel, the reciprocals
add, so the total resistance is smaller than the smallest resistor.
""",
    ),
    "The French Revolution": (
        "history",
        """# The French Revolution

The revolution began in 1789 when the Estates-General met at Versailles. On 14 July 1789
a crowd stormed the Bastille, a royal fortress and prison in Paris.

## The Terror

Between 1793 and 1794 the Committee of Public Safety, led by Robespierre, executed
thousands of suspected enemies of the revolution by guillotine.
""",
    ),
    "Python virtual environments": (
        None,
        """# Virtual environments

Create an isolated environment with `python -m venv .venv` and activate it before you
install packages with pip. Each project keeps its own dependency versions this way.
""",
    ),
}


@pytest.fixture
async def kb(db: Database) -> KnowledgeBase:
    return KnowledgeBase(db, HashingEmbedder(), max_tokens=80, overlap_tokens=15)


async def ingest_corpus(kb: KnowledgeBase) -> dict[str, store.DocumentRow]:
    out = {}
    for title, (course, text) in CORPUS.items():
        document, created = await kb.ingest_text(title, text, course=course, source=f"{title}.md")
        assert created
        out[title] = document
    return out


async def test_ingest_stores_document_and_chunks_and_dedupes(kb: KnowledgeBase, db: Database) -> None:
    async with db.connection() as conn:
        user_id = await conn.fetchval("INSERT INTO users (name, role) VALUES ('Mia', 'mentor') RETURNING id")
    title, (course, text) = "Photosynthesis", CORPUS["Photosynthesis"]
    document, created = await kb.ingest_text(title, text, course=course, created_by=user_id, language="en")
    assert created and document.chunk_count >= 3
    assert (document.title, document.course, document.created_by, document.language) == (title, course, user_id, "en")

    # The same text again, with Windows line ends and trailing spaces: the same document.
    again, created_again = await kb.ingest_text("Another title", text.replace("\n", "  \r\n"), course="other")
    assert not created_again and again.id == document.id
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM documents") == 1
        rows = await conn.fetch(
            "SELECT chunk_index, content, start_char, end_char, heading_path, course, embedding_model,"
            " vector_dims(embedding) AS dims FROM chunks ORDER BY chunk_index"
        )
        stored = await conn.fetchval("SELECT content FROM documents WHERE id = $1", document.id)
    assert len(rows) == document.chunk_count
    for row in rows:
        assert stored[row["start_char"]:row["end_char"]] == row["content"]
        assert (row["course"], row["embedding_model"], row["dims"]) == ("biology", "hashing-384-v1", 384)
    assert ["Photosynthesis", "The Calvin cycle"] in [list(r["heading_path"]) for r in rows]

    listed = await kb.list_documents()
    assert [d.id for d in listed] == [document.id]
    assert listed[0].as_dict()["created_by"] == str(user_id)
    full = await kb.get_document(document.id, with_content=True)
    assert full is not None and full.content == stored

    # The uploader's account going away keeps the document.
    async with db.connection() as conn:
        await conn.execute("DELETE FROM users WHERE id = $1", user_id)
    kept = await kb.get_document(document.id)
    assert kept is not None and kept.created_by is None


async def test_concurrent_uploads_of_the_same_text_store_one_document(kb: KnowledgeBase, db: Database) -> None:
    course, text = CORPUS["Ohm's law"]
    results = await asyncio.gather(*(kb.ingest_text(f"copy {i}", text, course=course) for i in range(4)))
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert len({document.id for document, _ in results}) == 1
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM documents") == 1
        assert await conn.fetchval("SELECT count(*) FROM chunks") == results[0][0].chunk_count


async def test_empty_document_is_refused(kb: KnowledgeBase) -> None:
    with pytest.raises(EmptyDocument):
        await kb.ingest_text("Nothing", " \n\x00\n ")


async def test_delete_cascades_to_chunks(kb: KnowledgeBase, db: Database) -> None:
    docs = await ingest_corpus(kb)
    victim = docs["Ohm's law"]
    assert await kb.delete(victim.id) is True
    assert await kb.delete(victim.id) is False
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM chunks WHERE document_id = $1", victim.id) == 0
        assert await conn.fetchval("SELECT count(*) FROM chunks") > 0
    assert all(r.document_id != victim.id for r in await kb.search("resistors in series and parallel", k=10))


@pytest.mark.parametrize(
    ("question", "title", "needle"),
    [
        ("What does RuBisCO do with carbon dioxide?", "Photosynthesis", "RuBisCO fixes carbon dioxide"),
        ("why do leaves look green", "Photosynthesis", "chlorophyll absorbs"),
        ("total resistance of resistors in parallel", "Ohm's law", "In parallel, the reciprocals"),
        ("when was the Bastille stormed", "The French Revolution", "stormed the Bastille"),
        ("who led the committee of public safety", "The French Revolution", "Robespierre"),
        ("how do I make a venv before installing with pip", "Python virtual environments", "python -m venv"),
    ],
)
async def test_hybrid_search_finds_the_right_chunk(kb: KnowledgeBase, question: str, title: str, needle: str) -> None:
    docs = await ingest_corpus(kb)
    results = await kb.search(question, k=3)
    assert results, question
    best = results[0]
    assert (best.title, best.document_id) == (title, docs[title].id)
    assert needle in best.content.replace("\n", " ")
    assert best.score > 0 and best.similarity is not None
    assert set(best.as_dict()) >= {"chunk_id", "document_id", "title", "content", "score", "heading_path"}


async def test_each_half_of_hybrid_search_contributes(kb: KnowledgeBase, db: Database) -> None:
    await ingest_corpus(kb)
    [qv] = await kb.embedder.embed(["photosynthesis light reactions oxygen"])
    async with db.connection() as conn:
        vector_hits = await store.search_vector(conn, qv, model=kb.embedder.name, dim=kb.embedder.dim, k=5)
        text_hits = await store.search_text(conn, "thylakoid", k=5)
        nothing = await store.search_text(conn, "the of and", k=5)  # only stopwords
    assert vector_hits and vector_hits[0].heading_path == ["Photosynthesis", "The light reactions"]
    assert [h.score for h in vector_hits] == sorted((h.score for h in vector_hits), reverse=True)
    assert len(text_hits) == 1 and "thylakoid" in text_hits[0].content
    assert nothing == []
    # A rare exact word is found by full text even when the vector side ranks it low.
    results = await kb.search("thylakoid", k=1)
    assert "thylakoid" in results[0].content and results[0].text_rank is not None


def test_rrf_fusion_rewards_agreement() -> None:
    def hit(n: int, score: float) -> store.ChunkHit:
        return store.ChunkHit(uuid.UUID(int=n), uuid.UUID(int=100), "t", f"c{n}", [], score)

    fused = fuse([hit(1, 0.9), hit(2, 0.8), hit(3, 0.7)], [hit(3, 2.0), hit(4, 1.0)], k=10)
    assert [r.content for r in fused] == ["c3", "c1", "c2", "c4"]
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61)
    assert (fused[0].similarity, fused[0].text_rank) == (0.7, 2.0)
    assert fused[3].similarity is None


async def test_course_filter(kb: KnowledgeBase) -> None:
    docs = await ingest_corpus(kb)
    question = "Bastille 1789 revolution"
    assert (await kb.search(question, k=1))[0].document_id == docs["The French Revolution"].id
    in_physics = await kb.search(question, k=10, course="physics")
    titles = {r.title for r in in_physics}
    # Only physics and course-less (general) material: never another course's.
    assert titles <= {"Ohm's law", "Python virtual environments"}
    assert (await kb.search("voltage current resistance", k=1, course="physics"))[0].title == "Ohm's law"
    assert {d.title for d in await kb.list_documents(course="history")} == {"The French Revolution"}


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


async def similarity_by(embedder: Embedder, q: str, hit: SearchResult) -> float:
    """The cosine `embedder` gives query and chunk: which model's vectors a search used."""
    [qv, cv] = await embedder.embed([q, embedding_input(hit.heading_path, hit.content)])
    return cosine(qv, cv)


async def stored_models(db: Database) -> tuple[str | None, set[str], set[str]]:
    """(active model, models in chunks, models waiting in chunk_vectors)."""
    async with db.connection() as conn:
        active = await store.get_active_model(conn)
        in_chunks = {r[0] for r in await conn.fetch("SELECT DISTINCT embedding_model FROM chunks")}
        staged = {r[0] for r in await conn.fetch("SELECT DISTINCT model FROM chunk_vectors")}
    return (active.model if active else None), in_chunks, staged


async def test_model_change_serves_old_vectors_until_reindex_switches(kb: KnowledgeBase, db: Database) -> None:
    """An install upgraded from `hashing` to the neural default: no moment without vector
    search, then every instance on the new vectors at once."""
    docs = await ingest_corpus(kb)
    hashing = HashingEmbedder()
    neural = make_embedder("onnx")
    upgraded = KnowledgeBase(db, neural, max_tokens=80, overlap_tokens=15)  # restarted with the new default
    second = KnowledgeBase(db, make_embedder("onnx"))  # another instance, same configuration
    total = await upgraded.pending_reindex()
    assert total == sum(d.chunk_count for d in docs.values())

    # Before reindex: search on every instance still answers with the hashing vectors.
    q = "Bastille prison Paris"
    for instance in (upgraded, second, kb):
        [top, *_] = await instance.search(q, k=3)
        assert top.document_id == docs["The French Revolution"].id and top.similarity is not None
        assert top.similarity == pytest.approx(await similarity_by(hashing, q, top), abs=1e-5)
    # A document added meanwhile is searchable at once and already has its new vector.
    cells, _ = await upgraded.ingest_text("Cells", "Cells are the smallest unit of life.", course="biology")
    [hit] = [r for r in await upgraded.search("smallest unit of life", k=5) if r.document_id == cells.id]
    assert hit.similarity == pytest.approx(await similarity_by(hashing, "smallest unit of life", hit), abs=1e-5)
    assert await stored_models(db) == ("hashing-384-v1", {"hashing-384-v1"}, {neural.name})
    assert await upgraded.pending_reindex() == total  # the new document needs nothing more

    seen: list[tuple[int, int]] = []
    assert await reindex_command_quiet(upgraded, seen) == total
    assert seen[-1] == (total, total)
    assert await stored_models(db) == (neural.name, {neural.name}, set())
    assert await upgraded.pending_reindex() == 0

    # After: every instance (even one still configured with hashing) searches the new vectors.
    for instance in (second, upgraded, kb):
        [top, *_] = await instance.search(q, k=3)
        assert top.document_id == docs["The French Revolution"].id
        assert top.similarity == pytest.approx(await similarity_by(neural, q, top), abs=1e-4)
    async with db.connection() as conn:
        index = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = $1", store.vector_index_name(neural.name))
    assert index is not None and "vector(384)" in index and neural.name in index


async def reindex_command_quiet(kb: KnowledgeBase, seen: list[tuple[int, int]]) -> int:
    return await kb.reindex(progress=lambda done, of: seen.append((done, of)), batch=4)


class FailingAfter:
    """Wraps an embedder and fails from its `calls`-th call on, like a model server going away."""

    def __init__(self, inner: Embedder, calls: int) -> None:
        self.inner, self.calls = inner, calls
        self.name, self.dim = inner.name, inner.dim

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls -= 1
        if self.calls < 0:
            raise EmbedderUnavailable("gone")
        return await self.inner.embed(texts)


async def test_interrupted_reindex_keeps_old_model_and_resumes(kb: KnowledgeBase, db: Database) -> None:
    docs = await ingest_corpus(kb)
    total = sum(d.chunk_count for d in docs.values())
    flaky = KnowledgeBase(db, FailingAfter(HashingEmbedder(128), calls=1))
    with pytest.raises(EmbedderUnavailable):
        await flaky.reindex(batch=4)
    # One batch was kept aside; search still runs on the old model, nothing switched.
    assert await stored_models(db) == ("hashing-384-v1", {"hashing-384-v1"}, {"hashing-128-v1"})
    assert await flaky.pending_reindex() == total - 4
    assert (await kb.search("Bastille prison Paris", k=1))[0].similarity is not None
    # A reindex run again embeds only what is left, then switches.
    resumed = KnowledgeBase(db, HashingEmbedder(128))
    assert await resumed.reindex(batch=4) == total - 4
    assert await stored_models(db) == ("hashing-128-v1", {"hashing-128-v1"}, set())
    [top] = await kb.search("Bastille prison Paris", k=1)
    assert top.similarity == pytest.approx(await similarity_by(HashingEmbedder(128), "Bastille prison Paris", top))


async def test_switch_refuses_while_a_chunk_lacks_the_new_vector(kb: KnowledgeBase, db: Database) -> None:
    """The switch itself re-counts under its lock: a chunk added after the last batch keeps it waiting."""
    await ingest_corpus(kb)
    new = HashingEmbedder(64)
    async with db.connection() as conn:
        todo = await store.chunks_to_embed(conn, new.name, limit=1000)
        vectors = await new.embed([c.content for c in todo[:-1]])
        await store.stage_embeddings(conn, new.name, [(c.id, v) for c, v in zip(todo, vectors)])
        assert await store.switch_active_model(conn, new.name, new.dim) == 1
        assert (await store.get_active_model(conn)) == store.ActiveModel("hashing-384-v1", 384)
        [last] = await new.embed([todo[-1].content])
        await store.stage_embeddings(conn, new.name, [(todo[-1].id, last)])
        assert await store.switch_active_model(conn, new.name, new.dim) == 0
        assert (await store.get_active_model(conn)) == store.ActiveModel(new.name, 64)


async def test_reindex_to_an_openai_compatible_model(kb: KnowledgeBase, db: Database) -> None:
    docs = await ingest_corpus(kb)
    async with FakeLLM(embedding_dim=32) as server:
        other = make_embedder("openai", model="local-embed", dim=32, base_url=server.base_url, batch_size=5)
        kb2 = KnowledgeBase(db, other)
        total = await kb2.pending_reindex()
        assert await kb2.reindex(batch=4) == total
        async with db.connection() as conn:
            models = await conn.fetch("SELECT DISTINCT embedding_model, vector_dims(embedding) AS d FROM chunks")
        assert [(r["embedding_model"], r["d"]) for r in models] == [("openai:local-embed", 32)]
        results = await kb2.search("Bastille prison Paris", k=3)
        assert results[0].document_id == docs["The French Revolution"].id
        assert results[0].similarity is not None
        # Newly ingested text is embedded by the new (now active) model only.
        new_doc, _ = await kb2.ingest_text("Cells", "Cells are the smallest unit of life.")
        assert await kb2.pending_reindex() == 0 and new_doc.chunk_count == 1
        assert await stored_models(db) == ("openai:local-embed", {"openai:local-embed"}, set())
        # Switching back: `kb` (hashing) cannot rebuild the remote model by name, so until
        # its reindex it answers from full text only, and says so in the log.
        assert all(r.similarity is None for r in await kb.search("Bastille", k=3))
        await other._client.close()  # else its garbage-collected client logs an error in a later test

    assert await kb.reindex() == total + 1
    assert (await kb.search("Bastille prison Paris", k=1))[0].similarity is not None


async def test_vector_query_uses_the_hnsw_index(kb: KnowledgeBase, db: Database) -> None:
    await ingest_corpus(kb)
    [qv] = await kb.embedder.embed(["light energy in chloroplasts"])
    sql = store.vector_search_sql(kb.embedder.name, kb.embedder.dim)
    async with db.transaction() as conn:
        await conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
        plan = "\n".join(
            r[0] for r in await conn.fetch("EXPLAIN " + sql, store.vector_literal(qv), 5, "biology")
        )
    assert "chunks_hnsw_hashing_384_v1" in plan, plan
    # ensure_vector_index is idempotent and names the default index as the migration does.
    assert await kb.ensure_index() == "chunks_hnsw_hashing_384_v1"


async def test_ingest_paths_walks_folders_and_counts(kb: KnowledgeBase, tmp_path: Path) -> None:
    from tests.test_extract import make_pdf

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "ohm.md").write_text(CORPUS["Ohm's law"][1])
    (tmp_path / "notes" / "copy-of-ohm.md").write_text(CORPUS["Ohm's law"][1])
    (tmp_path / "notes" / "page.html").write_text("<h1>Acids</h1><p>Acids have a pH below 7.</p>")
    (tmp_path / "notes" / "waves.pdf").write_bytes(make_pdf(["Waves", "Sound is a longitudinal wave."]))
    (tmp_path / "notes" / "empty.txt").write_text("   \n")
    (tmp_path / "notes" / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "notes" / ".hidden.md").write_text("secret")
    single = tmp_path / "single.txt"
    single.write_text("Mitochondria make ATP.")

    report = await ingest_paths(kb, [tmp_path / "notes", single], course="science", show_progress=False)
    assert (report.added, report.duplicates) == (4, 1)
    assert list(report.failed) == [str(tmp_path / "notes" / "empty.txt")]
    titles = {d.title: d for d in await kb.list_documents()}
    assert set(titles) == {"Ohm's law", "Acids", "Waves", "Mitochondria make ATP."}
    assert all(d.course == "science" for d in titles.values())
    assert titles["Waves"].source == str(tmp_path / "notes" / "waves.pdf")
    assert report.chunks == sum(d.chunk_count for d in titles.values())
    assert (await kb.search("longitudinal sound wave", k=1))[0].title == "Waves"
    with pytest.raises(FileNotFoundError):
        await ingest_paths(kb, [tmp_path / "missing"], show_progress=False)


async def test_course_filter_still_fills_k_through_the_index(kb: KnowledgeBase, db: Database) -> None:
    """With a filter, HNSW alone would stop after ef_search rows of other courses; the
    iterative scan keeps going until k matching rows are found."""
    # More rows of the other course than one HNSW pass looks at (ef_search).
    many = "\n\n".join(f"# Topic {i}\n\nVoltage and current in circuit number {i}." for i in range(store.EF_SEARCH_MIN + 60))
    await kb.ingest_text("Circuits", many, course="physics")
    poems = "# Odes\n\nAn ode to autumn.\n\n# Sonnets\n\nA sonnet about the sea."
    await kb.ingest_text("Poems", poems, course="poetry")
    [qv] = await kb.embedder.embed(["voltage and current in a circuit"])
    async with db.connection() as conn:
        # Make the planner take the HNSW index (on so few rows it would rather filter and sort).
        await conn.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        hits = await store.search_vector(conn, qv, model=kb.embedder.name, dim=kb.embedder.dim, k=2, course="poetry")
    assert sorted(h.heading_path[0] for h in hits) == ["Odes", "Sonnets"]


async def test_two_servers_switch_to_the_neural_default_together(
    start_instance: Any, base_settings: Settings, db: Database, capsys: pytest.CaptureFixture[str],
) -> None:
    """Upgrading a running deployment: one server still on `hashing`, one restarted with the
    new default, `studyhall reindex` in between; /api/search answers throughout."""
    from handlers.knowledge import reindex_command
    from server.factories import knowledge_base

    old = await start_instance()  # the suite's settings: hashing
    new = await start_instance(knowledge__embedder="onnx")
    q = "when did the uprising in France start"
    async with aiohttp.ClientSession() as session:
        api_old, api_new = Api(session, old.url), Api(session, new.url)
        mentor = await api_old.staff(db, "mentor")
        for title, (course, text) in CORPUS.items():
            status, _ = await api_old.request("POST", "/api/documents", mentor,
                                              json={"title": title, "content": text, "course": course})
            assert status == 201

        async def top(api: Api) -> SearchResult:
            status, body = await api.request("GET", "/api/search", mentor, params={"q": q, "k": "10"})
            assert status == 200, body
            best = max((r for r in body["results"] if r["similarity"] is not None), key=lambda r: r["similarity"])
            return SearchResult(uuid.UUID(best["chunk_id"]), uuid.UUID(best["document_id"]), best["title"],
                                best["content"], best["score"], best["heading_path"], best["similarity"])

        for api in (api_old, api_new):  # both on the hashing vectors
            hit = await top(api)
            assert hit.similarity == pytest.approx(await similarity_by(HashingEmbedder(), q, hit), abs=1e-5)

        onnx_settings = base_settings.with_(knowledge__embedder="onnx")
        assert await reindex_command(knowledge_base(onnx_settings, db)) == 0
        out = capsys.readouterr().out
        assert f"search switched from hashing-384-v1 to {ONNX_DEFAULT_NAME}" in out

        neural = make_embedder("onnx")
        for api in (api_old, api_new):  # both on the new vectors, without a restart
            hit = await top(api)
            assert hit.title == "The French Revolution"
            assert hit.similarity == pytest.approx(await similarity_by(neural, q, hit), abs=1e-4)


async def test_active_model_is_remembered_yet_a_switch_elsewhere_shows_on_the_next_search(
    kb: KnowledgeBase, db: Database
) -> None:
    """Search no longer reads the active model for every question, but a `studyhall reindex`
    on another instance still moves this one's searches to the new vectors at once."""
    docs = await ingest_corpus(kb)
    q = "Bastille prison Paris"
    remembering = KnowledgeBase(db, HashingEmbedder(), active_model_ttl=3600)
    assert (await remembering.search_scored(q, k=3)).model == "hashing-384-v1"
    async with db.connection() as conn:  # a change no search can notice: only the state row
        await conn.execute("UPDATE embedding_state SET active_model = 'elsewhere', active_dim = 8")
    assert (await remembering.active_model()).model == "hashing-384-v1"  # remembered, not read
    assert (await remembering.active_model(fresh=True)).model == "elsewhere"
    async with db.connection() as conn:
        await conn.execute("UPDATE embedding_state SET active_model = 'hashing-384-v1', active_dim = 384")
    assert (await remembering.active_model(fresh=True)).model == "hashing-384-v1"

    other = KnowledgeBase(db, HashingEmbedder(128))  # another instance, reconfigured, reindexes
    await other.reindex()
    scored = await remembering.search_scored(q, k=3)  # within the hour it would trust its memory
    assert scored.model == "hashing-128-v1"
    assert scored.hits[0].document_id == docs["The French Revolution"].id
    assert scored.hits[0].similarity == pytest.approx(
        await similarity_by(HashingEmbedder(128), q, scored.hits[0]), abs=1e-5)
    assert (await remembering.active_model()).model == "hashing-128-v1"

    short = KnowledgeBase(db, HashingEmbedder(), active_model_ttl=0.05)
    assert (await short.active_model()).model == "hashing-128-v1"
    async with db.connection() as conn:
        await conn.execute("UPDATE embedding_state SET active_model = 'elsewhere', active_dim = 8")
    await asyncio.sleep(0.1)
    assert (await short.active_model()).model == "elsewhere"  # the TTL bounds what search cannot see


async def test_an_extracted_file_is_stored_with_the_hash_extraction_made(
    kb: KnowledgeBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ingest_file` stores the text and hash `extract` produced, without normalising and
    hashing a (possibly large) text a second time."""
    from rag import retrieval
    from rag.extract import extract_file

    page = tmp_path / "venv.md"
    page.write_text("# Virtual environments\n\nCreate one with `python -m venv .venv`.\n", encoding="utf-8")
    expected = extract_file(page)

    def again(*_: object) -> str:
        raise AssertionError("normalised or hashed twice")

    monkeypatch.setattr(retrieval, "normalize_text", again)
    monkeypatch.setattr(retrieval, "content_hash", again)
    document, created = await kb.ingest_file(page)
    assert created and document.content_hash == expected.content_hash
    monkeypatch.undo()
    same, created = await kb.ingest_text(None, expected.text)  # the same text by the other door
    assert not created and same.id == document.id


async def test_full_text_index_keeps_no_pending_list(kb: KnowledgeBase, db: Database) -> None:
    """Migration 0018: new chunks go straight into the GIN index, so no question has to scan
    a pending list of unmerged entries first."""
    await ingest_corpus(kb)
    async with db.connection() as conn:
        options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'chunks_tsv_idx'")
        assert options == ["fastupdate=off"]
        assert await conn.fetchval("SELECT gin_clean_pending_list('chunks_tsv_idx'::regclass)") == 0


async def _store_crowded_document(db: Database, embedder: Embedder, title: str, sentence: str, filler: str,
                                  seed: int) -> None:
    """One document of 2,500 chunks that all hold `sentence`'s words (random vectors): a
    question in those words makes the full-text query rank every one of them."""
    import random

    rng = random.Random(seed)
    chunks = []
    for i in range(2500):
        vec = [rng.gauss(0, 1) for _ in range(embedder.dim)]
        norm = sum(x * x for x in vec) ** 0.5
        text = f"{sentence}, note {i}. " + filler * (i % 7)
        chunks.append(store.NewChunk(i, text, 0, len(text), 20, [title], {embedder.name: [x / norm for x in vec]}))
    async with db.transaction() as conn:
        await store.insert_document(conn, title=title, content=title.lower(), content_hash=title.lower(), chunks=chunks,
                                    fallback_model=embedder.name)


async def test_hybrid_search_over_its_text_budget_answers_from_vectors_and_counts_it(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A question whose words match 2,500 chunks: ranking them all takes longer than
    the budget, so the server cancels the full-text query and hybrid search answers from
    the vector ranking alone, once logged and counted; with no budget full text ranks them."""
    from rag.retrieval import Fusion

    embedder = HashingEmbedder()
    budgeted = KnowledgeBase(db, embedder, fusion=Fusion(text_budget_ms=1))
    await budgeted.active_model()
    await _store_crowded_document(db, embedder, "Leaves", "Chlorophyll in the leaf absorbs light for photosynthesis",
                                  "Plants grow. ", seed=5)
    q = "chlorophyll light photosynthesis"
    with caplog.at_level("WARNING", logger="rag.retrieval"):
        hits = await budgeted.search(q, k=5)
    assert len(hits) == 5 and all(h.similarity is not None and h.text_rank is None for h in hits)
    assert budgeted.text_over_budget == 1
    assert [r.message for r in caplog.records].count(
        "full-text search over its budget: this question is ranked by vectors alone") == 1
    async with db.connection() as conn:  # the connection went back to the pool clean
        assert await conn.fetchval("SHOW statement_timeout") != "1ms"
    for _ in range(5):  # each cancel lands on its own query, never on the next one
        await budgeted.search(q, k=5)
        async with db.connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM chunks WHERE tsv @@ plainto_tsquery('english', $1)", q) > 0
    assert budgeted.text_over_budget == 6

    unbudgeted = KnowledgeBase(db, embedder, fusion=Fusion(text_budget_ms=0))
    hits = await unbudgeted.search(q, k=5)
    assert any(h.text_rank is not None for h in hits) and unbudgeted.text_over_budget == 0
    text_only = KnowledgeBase(db, embedder, fusion=Fusion(mode="text", text_budget_ms=1))
    assert len(await text_only.search(q, k=5)) == 5  # nothing to fall back to: no budget


async def test_searches_over_the_text_budget_are_counted_on_metrics(db: Database, start_instance: Any) -> None:
    """Operators see how often hybrid search ran past its full-text budget: the server's
    knowledge base counts it and `/metrics` shows it (a counter, read at each scrape)."""
    from server.keys import CORE

    inst = await start_instance(retrieval__text_budget_ms=1)
    kb = inst.app[CORE].kb
    await _store_crowded_document(db, HashingEmbedder(), "Stomata", "Stomata open in the leaf to let carbon dioxide in",
                                  "Leaves breathe. ", seed=6)

    async def scraped() -> str:
        async with aiohttp.ClientSession() as http, http.get(inst.url + "/metrics") as r:
            assert r.status == 200
            return await r.text()

    assert "studyhall_search_text_over_budget_total 0.0" in await scraped()
    await kb.search("stomata carbon dioxide leaf", k=5)
    assert kb.text_over_budget == 1
    assert "studyhall_search_text_over_budget_total 1.0" in await scraped()


async def test_ingest_paths_prepares_the_next_file_while_this_one_embeds(db: Database, tmp_path: Path) -> None:
    """Extraction and chunking of file n+1 overlap the embedding of file n: the embedder
    here lets a file's chunks through only once the next file has been prepared."""
    from rag.retrieval import PreparedFile

    prepared: list[str] = []
    next_ready = asyncio.Event()

    class Watching(KnowledgeBase):
        async def prepare_file(self, path: Path) -> PreparedFile:
            result = await super().prepare_file(path)
            prepared.append(path.name)
            if path.name == "b.md":
                next_ready.set()
            return result

    class WaitsForNext:
        name, dim = "hashing-384-v1", 384

        def __init__(self) -> None:
            self.inner = HashingEmbedder()

        async def embed(self, texts: list[str]) -> list[list[float]]:
            if any("Alpha" in t for t in texts):  # a.md's chunks: b.md must be under way already
                await asyncio.wait_for(next_ready.wait(), timeout=3)
            return await self.inner.embed(texts)

    for name, word in (("a.md", "Alpha"), ("b.md", "Beta"), ("c.md", "Gamma")):
        (tmp_path / name).write_text(f"# {word}\n\n{word} particles are described here in a sentence.\n")
    kb = Watching(db, WaitsForNext())
    report = await ingest_paths(kb, [tmp_path], show_progress=False)
    assert (report.added, report.failed) == (3, {})
    assert prepared == ["a.md", "b.md", "c.md"]
    again = tmp_path / "again"
    again.mkdir()
    for name, word in (("a.md", "Alpha"), ("b.md", "Beta")):
        (again / name).write_text(f"# {word}\n\nNew {word} text, so nothing here is a duplicate.\n")
    next_ready.clear()
    # Without prefetch a.md waits for b.md in vain (the timeout, an OSError, is reported as its failure).
    report = await ingest_paths(Watching(db, WaitsForNext()), [again], show_progress=False, prefetch=False)
    assert list(report.failed) == [str(again / "a.md")] and report.added == 1


async def test_ingest_paths_inserts_a_file_while_the_next_one_embeds(db: Database, tmp_path: Path) -> None:
    """The rows of file n are inserted while file n+1 is embedded: here a.md's insert goes
    through only once b.md's chunks have reached the embedder. Two files with the same
    text in a row are still stored once (the second counted as a duplicate), and every
    file's chunks are searchable at the end."""
    from rag.retrieval import EmbeddedDocument

    embedding_started: dict[str, asyncio.Event] = {w: asyncio.Event() for w in ("Alpha", "Beta", "Gamma")}

    class Watching(KnowledgeBase):
        async def insert_embedded(self, ready: EmbeddedDocument) -> tuple[store.DocumentRow, bool]:
            if "Alpha" in ready.text:  # a.md: b.md must be embedding already
                await asyncio.wait_for(embedding_started["Beta"].wait(), timeout=3)
            return await super().insert_embedded(ready)

    class Signals:
        name, dim = "hashing-384-v1", 384

        def __init__(self) -> None:
            self.inner = HashingEmbedder()

        async def embed(self, texts: list[str]) -> list[list[float]]:
            for word, started in embedding_started.items():
                if any(word in t for t in texts):
                    started.set()
            return await self.inner.embed(texts)

    for name, word in (("a.md", "Alpha"), ("b.md", "Beta"), ("c.md", "Gamma"), ("d.md", "Gamma")):
        (tmp_path / name).write_text(f"# {word}\n\n{word} particles are described here in a sentence.\n")
    kb = Watching(db, Signals())
    report = await ingest_paths(kb, [tmp_path], show_progress=False)
    assert (report.added, report.duplicates, report.failed, report.chunks) == (3, 1, {}, 3)
    for word in ("Alpha", "Beta", "Gamma"):
        [hit] = await kb.search(f"{word} particles", k=1, fusion=None)
        assert word in hit.content
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM documents") == 3
    # One stage after the other, a.md's insert waits for b.md in vain.
    again = tmp_path / "again"
    again.mkdir()
    for name, word in (("a.md", "Alpha"), ("b.md", "Beta")):
        (again / name).write_text(f"# {word}\n\nNew {word} text, so nothing here is a duplicate.\n")
    embedding_started["Beta"].clear()
    with pytest.raises(TimeoutError):
        await ingest_paths(Watching(db, Signals()), [again], show_progress=False, prefetch=False)
