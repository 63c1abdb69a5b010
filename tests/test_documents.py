"""The documents API and search over HTTP, against a real server and PostgreSQL:
each upload format, dedupe, roles, listing by course, deletion, and search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from storage.db import Database
from tests.client import Api, User
from tests.test_extract import FIXTURES, PNG, make_pdf, random_bytes

PHOTOSYNTHESIS = """# Photosynthesis

Plants capture light energy in their chloroplasts. The green pigment chlorophyll absorbs
mostly red and blue light.

## The Calvin cycle

In the stroma, the enzyme RuBisCO fixes carbon dioxide from the air and builds sugars.
"""

HTML = """<html><head><title>Ohm's law</title><style>p{color:red}</style></head>
<body><nav>Home | Courses</nav><h1>Ohm's law</h1>
<p>The current through a conductor is proportional to the voltage: V = I x R.</p>
<h2>Resistors in series</h2><p>Resistors in series add up: the total is R1 + R2.</p>
<script>alert("never indexed")</script></body></html>"""


async def _upload(api: Api, user: User, filename: str, data: bytes, **fields: str) -> tuple[int, dict]:
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    return await api.request("POST", "/api/documents", user, data=form)


async def test_upload_each_format_and_dedupe(api: Api, db: Database) -> None:
    mentor = await api.staff(db, "mentor")
    status, body = await api.request("POST", "/api/documents", mentor, json={
        "title": "Photosynthesis notes", "content": PHOTOSYNTHESIS, "course": "biology", "language": "en",
    })
    assert status == 201, body
    doc = body["document"]
    assert doc["title"] == "Photosynthesis notes" and doc["course"] == "biology" and doc["chunk_count"] >= 1

    # The same text again (CRLF line ends) is the same document: 200, nothing new stored.
    status, again = await api.request("POST", "/api/documents", mentor, json={
        "title": "A copy", "content": PHOTOSYNTHESIS.replace("\n", "\r\n"),
    })
    assert status == 200 and again["document"]["id"] == doc["id"] and again["created"] is False

    uploads = {
        "notes.txt": b"Mitochondria are the powerhouse of the cell. They make ATP by respiration.",
        "waves.md": b"# Waves\n\nSound is a longitudinal wave that needs a medium to travel.",
        "ohm.html": HTML.encode(),
        "gravity.pdf": make_pdf(["Gravity pulls masses together.", "On Earth it accelerates objects at 9.8 m/s2."]),
    }
    ids = {}
    for name, data in uploads.items():
        status, body = await _upload(api, mentor, name, data, course="physics")
        assert status == 201, (name, body)
        ids[name] = body["document"]["id"]
        assert body["document"]["source"] == name and body["document"]["course"] == "physics"
    status, same = await _upload(api, mentor, "again.pdf", uploads["gravity.pdf"])
    assert status == 200 and same["document"]["id"] == ids["gravity.pdf"]

    # Extraction really happened: HTML lost its script and nav, PDF text is searchable.
    status, full = await api.request("GET", f"/api/documents/{ids['ohm.html']}", mentor)
    assert status == 200 and "proportional to the voltage" in full["document"]["content"]
    assert "alert" not in full["document"]["content"] and "Courses" not in full["document"]["content"]
    status, found = await api.request("GET", "/api/search", mentor, params={"q": "acceleration of gravity on Earth"})
    assert status == 200 and found["results"][0]["document_id"] == ids["gravity.pdf"]

    status, listed = await api.request("GET", "/api/documents", mentor, params={"course": "physics"})
    assert status == 200 and {d["id"] for d in listed["documents"]} == set(ids.values())


async def test_bad_uploads_are_bad_requests(api: Api, db: Database) -> None:
    admin = await api.staff(db, "admin")
    status, body = await _upload(api, admin, "slides.pptx", b"PK\x03\x04 not supported")
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, body = await _upload(api, admin, "broken.pdf", b"%PDF-1.4 this is not a pdf")
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, body = await api.request("POST", "/api/documents", admin, json={"title": "Empty", "content": "   \n "})
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, body = await api.request("POST", "/api/documents", admin, json={"content": 42})
    assert status == 400
    for name, data, named in (("notes.txt", random_bytes(5000), "binary data"), ("diagram.md", PNG, "image/png"),
                              ("page.html", random_bytes(5000).replace(b"\x00", b"."), "binary data")):
        status, body = await _upload(api, admin, name, data)
        assert status == 400 and body["error"]["code"] == "bad_request", (name, body)
        assert "not text" in body["error"]["message"] and named in body["error"]["message"], body
    status, listed = await api.request("GET", "/api/documents", admin)
    assert status == 200 and listed["documents"] == []  # nothing of any refused upload was stored
    for multipart in (True, False):
        form = aiohttp.FormData(default_to_multipart=multipart)
        form.add_field("title", "no file")
        status, body = await api.request("POST", "/api/documents", admin, data=form)
        assert status == 400 and "file" in body["error"]["message"], body


async def test_roles_and_delete(api: Api, db: Database) -> None:
    student = await api.register("Sam")
    agent = await api.staff(db, "agent")
    status, body = await api.request("POST", "/api/documents", student, json={"title": "x", "content": "Some text."})
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, _ = await api.request("GET", "/api/documents", student)
    assert status == 403
    status, _ = await api.request("GET", "/api/search", None, params={"q": "cells"})
    assert status == 401

    status, body = await api.request("POST", "/api/documents", agent, json={
        "title": "Cells", "content": "Mitochondria make ATP. Ribosomes build proteins from amino acids.",
    })
    assert status == 201
    doc_id = body["document"]["id"]
    # Students may search (the tutor's material is theirs to read) but not delete.
    status, found = await api.request("GET", "/api/search", student, params={"q": "what builds proteins", "k": "3"})
    assert status == 200 and found["results"][0]["document_id"] == doc_id
    hit = found["results"][0]
    assert {"chunk_id", "document_id", "title", "content", "score"} <= hit.keys() and "Ribosomes" in hit["content"]
    status, _ = await api.request("DELETE", f"/api/documents/{doc_id}", student)
    assert status == 403

    status, body = await api.request("DELETE", f"/api/documents/{doc_id}", agent)
    assert status == 200 and body["document"]["id"] == doc_id
    status, found = await api.request("GET", "/api/search", student, params={"q": "what builds proteins"})
    assert status == 200 and found["results"] == []
    status, body = await api.request("DELETE", f"/api/documents/{doc_id}", agent)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, _ = await api.request("DELETE", "/api/documents/not-a-uuid", agent)
    assert status == 404


async def test_search_course_filter_and_parameters(api: Api, db: Database) -> None:
    mentor = await api.staff(db, "mentor")
    student = await api.register("Sue")
    texts = {
        "biology": "Enzymes speed up chemical reactions in living cells without being used up.",
        "chemistry": "Catalysts speed up chemical reactions and are not consumed by them.",
        None: "General study tips: space your revision and test yourself on reactions.",
    }
    ids = {}
    for course, content in texts.items():
        payload = {"title": f"{course} notes", "content": content, **({"course": course} if course else {})}
        status, body = await api.request("POST", "/api/documents", mentor, json=payload)
        assert status == 201
        ids[course] = body["document"]["id"]
    status, found = await api.request("GET", "/api/search", student, params={"q": "speed up reactions", "course": "biology"})
    got = {r["document_id"] for r in found["results"]}
    # The course's own documents plus general ones; never another course's.
    assert ids["biology"] in got and ids["chemistry"] not in got
    status, found = await api.request("GET", "/api/search", student, params={"q": "speed up reactions", "k": "1"})
    assert len(found["results"]) == 1
    for bad in ({"q": ""}, {"q": "x", "k": "0"}, {"q": "x", "k": "abc"}, {"q": "x", "k": "51"}):
        status, body = await api.request("GET", "/api/search", student, params=bad)
        assert status == 400 and body["error"]["code"] == "bad_request", bad


async def test_ingest_and_reindex_commands(base_settings: Any, db: Database, tmp_path: Path, capsys: Any) -> None:
    """`studyhall ingest` and `studyhall reindex` through the functions server/cli.py calls."""
    from handlers.knowledge import ingest_paths_command, reindex_command
    from server.cli import core_for_command
    from server.factories import knowledge_base

    (tmp_path / "sub").mkdir()
    (tmp_path / "enzymes.md").write_text("# Enzymes\n\nEnzymes speed up reactions in cells.")
    (tmp_path / "sub" / "osmosis.txt").write_text("Osmosis moves water across a membrane.")
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.4 not really a pdf")
    async with core_for_command(base_settings) as core:
        kb = knowledge_base(base_settings, core.db)
        assert await ingest_paths_command(kb, [tmp_path], course="biology") == 1  # one file failed
        out = capsys.readouterr()
        assert "added 2 document(s)" in out.out and "scan.pdf" in out.err
        assert await ingest_paths_command(kb, [tmp_path / "enzymes.md"], course=None) == 0
        assert "1 already stored" in capsys.readouterr().out
        assert await ingest_paths_command(kb, [tmp_path / "missing"], course=None) == 2

    # A new embedder (another dimension is another model): everything awaits reindex.
    changed = base_settings.with_(knowledge__embedding_dim=128)
    kb = knowledge_base(changed, db)
    assert kb.embedder.name == "hashing-128-v1" and await kb.pending_reindex() == 2
    async with core_for_command(changed) as core:
        assert await reindex_command(knowledge_base(changed, core.db)) == 0
    assert "re-embedded 2 chunk(s) with hashing-128-v1" in capsys.readouterr().out
    assert await kb.pending_reindex() == 0
    [hit] = await kb.search("how does water cross a membrane", k=1)
    assert hit.title == "osmosis" or "Osmosis" in hit.content


async def test_ingest_lists_unsupported_and_refused_files_and_exit_status_says_so(
    base_settings: Any, db: Database, tmp_path: Path, capsys: Any
) -> None:
    from handlers.knowledge import IngestExit, ingest_paths_command
    from server.cli import core_for_command
    from server.factories import knowledge_base

    course = tmp_path / "course"
    (course / "img").mkdir(parents=True)
    (course / "enzymes.md").write_text("# Enzymes\n\nEnzymes speed up reactions in cells.")
    (course / "img" / "cell.png").write_bytes(PNG)
    (course / "slides.pptx").write_bytes(b"PK\x03\x04" + random_bytes(100))
    (course / ".git").mkdir()
    (course / ".git" / "HEAD").write_text("ref: refs/heads/main")  # hidden: neither ingested nor listed
    async with core_for_command(base_settings) as core:
        kb = knowledge_base(base_settings, core.db)
        assert await ingest_paths_command(kb, [course], course="biology") == IngestExit.UNSUPPORTED == 3
        out = capsys.readouterr()
        assert "added 1 document(s)" in out.out
        assert "skipped 2 file(s) of unsupported types (.png 1, .pptx 1)" in out.err
        assert f"unsupported: {course / 'img' / 'cell.png'}" in out.err and "slides.pptx" in out.err
        assert ".git" not in out.err

        # A binary file named .txt is refused, not stored as garbage: status 1 wins over 3.
        (course / "notes.txt").write_bytes(random_bytes(3000))
        assert await ingest_paths_command(kb, [course], course="biology") == IngestExit.FAILED == 1
        out = capsys.readouterr()
        assert f"failed: {course / 'notes.txt'}: the file is not text" in out.err and "1 already stored" in out.out
        assert [d.title for d in await kb.list_documents()] == ["Enzymes"]

        # Excluded files are neither tried nor listed.
        assert await ingest_paths_command(kb, [course], course=None, exclude=["*.txt", "img/*", "*.pptx"]) == 0
        assert "unsupported" not in capsys.readouterr().err
        assert await ingest_paths_command(kb, [course], course=None, base_url="ftp://example.org/") == 2
        assert "--base-url must be an absolute http(s) URL" in capsys.readouterr().err


async def test_base_url_turns_local_paths_into_links_in_search_and_tutor_citations(
    base_settings: Any, db: Database, tmp_path: Path, start_instance: Any, capsys: Any
) -> None:
    """`studyhall ingest DOCS --base-url URL`: a student's citation opens the public page."""
    from handlers.knowledge import ingest_paths_command
    from server.cli import core_for_command
    from server.factories import knowledge_base

    docs = tmp_path / "html"
    (docs / "library").mkdir(parents=True)
    (docs / "library" / "venv.html").write_bytes((FIXTURES / "sphinx_venv.html").read_bytes())
    (docs / "tutorial join.html").write_bytes((FIXTURES / "postgres_tutorial_join.html").read_bytes())
    async with core_for_command(base_settings) as core:
        kb = knowledge_base(base_settings, core.db)
        assert await ingest_paths_command(kb, [docs], course="python") == 0  # first without links
        assert {d.source for d in await kb.list_documents()} == {str(docs / "library" / "venv.html"),
                                                                 str(docs / "tutorial join.html")}
        capsys.readouterr()
        code = await ingest_paths_command(kb, [docs], course="python", base_url="https://docs.python.org/3.11")
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "2 already stored, 2 of them now linked to https://docs.python.org/3.11/" in out.out
    venv_url = "https://docs.python.org/3.11/library/venv.html"
    sources = {d.title: d.source for d in await knowledge_base(base_settings, db).list_documents()}
    assert sources == {"venv — Creation of virtual environments": venv_url,
                       "2.6. Joins Between Tables": "https://docs.python.org/3.11/tutorial%20join.html"}

    inst = await start_instance()
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        student = await api.register("Stu")
        status, found = await api.request("GET", "/api/search", student,
                                          params={"q": "create a virtual environment with venv", "k": "3"})
        assert status == 200 and found["results"][0]["source"] == venv_url, found
        sock = await api.socket(student)
        conv = (await sock.ok("tutor:start", {"course": "python"}))["conversation"]
        question = (await sock.ok("message:send", {"conversation_id": conv["id"], "client_id": "q1",
                                                   "content": "How do I create a virtual environment with venv?"}))
        asked = question["message"]
        final = (await sock.wait_for(
            "message:new", lambda d: d["message"]["metadata"].get("reply_to") == asked["id"], timeout=15))["message"]
        citations = final["metadata"]["citations"]
        assert citations and {c["source"] for c in citations} == {venv_url}, citations
        await api.close_sockets()
