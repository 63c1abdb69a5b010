"""`studyhall eval` end to end (the real command, a real PostgreSQL) and
`POST /api/search/eval` (validation and who may run it), on a tiny set with known answers:
one question only full text answers, one only the vector half answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from server.cli import main
from storage.db import Database
from tests.client import Api

# One chunk each. "XJ42" is only in the boiler manual, where "gasket" is one word among many;
# the seals note is about gaskets and little else. So "gasket XJ42": full text (every word
# in one chunk) finds only the manual, while the bag-of-words vector prefers the seals note.
# "leaking gaskets": no chunk holds "leak", so full text finds nothing; the vector half
# matches "gaskets" to the seals note.
DOCUMENTS = {
    "boiler.md": "# Boiler manual\n\nEvery autumn, bleed the radiators, check the pressure gauge reads between one "
                 "and two bar, test the thermostat, clean the condensate trap and the flue terminal, and replace "
                 "part XJ42 before the heating season; the gasket behind the burner door comes in the same kit.",
    "seals.md": "# Gaskets and seals\n\nA gasket seals two surfaces. Gaskets: rubber gaskets, cork gaskets.",
    "bread.md": "# Bread\n\nKnead the dough, let it rise for an hour, then bake it in a hot oven.",
}
QUESTIONS = [
    {"id": "text-only", "question": "gasket XJ42", "sources": ["boiler.md"]},
    {"id": "vector-only", "question": "leaking gaskets", "titles": ["gaskets AND seals"]},
]


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> Path:
    """The command reads its settings from the environment, as an operator runs it."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("STUDYHALL_DATA_DIR", str(tmp_path / "unused"))
    monkeypatch.setenv("STUDYHALL_EMBEDDER", "hashing")  # the known answers are the hashing embedder's
    monkeypatch.setenv("STUDYHALL_LOG_JSON", "0")
    for name in ("STUDYHALL_RETRIEVAL_MODE", "STUDYHALL_RETRIEVAL_VECTOR_WEIGHT", "STUDYHALL_RETRIEVAL_TEXT_WEIGHT"):
        monkeypatch.delenv(name, raising=False)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in DOCUMENTS.items():
        (corpus / name).write_text(text)
    return corpus


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else orjson.dumps(line).decode() for line in lines) + "\n")
    return path


def _by_retriever(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["retriever"]: r for r in report["retrievers"]}


def test_eval_command_end_to_end(cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", str(cli_env), "--course", "home"]) == 0
    capsys.readouterr()
    questions = _write(tmp_path / "q.jsonl", ["# a comment, then a blank line", "", *QUESTIONS])
    out = tmp_path / "report.json"

    assert main(["eval", str(questions), "--json", str(out), "--k", "1,2", "--weights", "0:1", "--course", "home"]) == 0
    printed = capsys.readouterr().out
    report = orjson.loads(out.read_bytes())
    assert report["questions"] == 2 and report["k"] == [1, 2] and report["configured"] == "hybrid 1:1"
    figures = _by_retriever(report)
    assert list(figures) == ["vector", "text", "hybrid 1:1", "hybrid 0:1"]
    outcome = {q["id"]: q["first_relevant"] for q in report["per_question"]}
    # Full text finds the manual first and has nothing for the leak; vector the other way round.
    assert outcome["text-only"]["text"] == 1 and outcome["text-only"]["vector"] == 2
    assert outcome["vector-only"]["text"] is None and outcome["vector-only"]["vector"] == 1
    assert figures["text"]["recall@1"] == 0.5 and figures["vector"]["recall@1"] == 0.5
    assert figures["vector"]["recall@2"] == 1.0 and figures["text"]["recall@2"] == 0.5
    assert figures["vector"]["mrr@2"] == pytest.approx(0.75)  # (1/2 + 1) / 2
    assert figures["vector"]["ndcg@2"] == pytest.approx(0.8155, abs=1e-4)  # (1/log2(3) + 1) / 2
    # Fused, each question's right document comes first; text alone by weight is text's order.
    assert figures["hybrid 1:1"]["recall@1"] == 1.0 and figures["hybrid 1:1"]["mrr@2"] == 1.0
    assert figures["hybrid 0:1"]["recall@2"] == 0.5
    assert all(f["p95_ms"] >= f["p50_ms"] > 0 for f in figures.values())
    # The printed table carries the same figures.
    rows = {line.split("  ")[0].rstrip(" *"): line.split() for line in printed.splitlines()[2:6]}
    assert rows["vector"][1:5] == ["0.500", "1.000", "0.750", "0.815"]
    assert rows["text"][1:5] == ["0.500", "0.500", "0.500", "0.500"]
    assert "hybrid 1:1 *" in printed and "2 questions, course home" in printed

    # Vector alone configured: it is the marked row, and no hybrid row is left.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDYHALL_RETRIEVAL_MODE", "vector")
        assert main(["eval", str(questions), "--k", "1,2", "--course", "home"]) == 0
    table = capsys.readouterr().out.splitlines()[2:-1]
    assert [line.split("  ")[0] for line in table] == ["vector *", "text"]
    assert table[0].split()[2:6] == ["0.500", "1.000", "0.750", "0.815"]


def test_eval_command_refuses_bad_question_files(cli_env: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", str(cli_env)]) == 0
    capsys.readouterr()
    cases = {
        "not json": (["{nope"], "q.jsonl:1: not JSON"),
        "no answer named": ([{"question": "bread?"}], "name at least one expected document"),
        "unknown source": ([QUESTIONS[0], {"question": "rye", "sources": ["rye.md"]}], "no document with source 'rye.md'"),
        "unknown id": ([{"question": "rye", "documents": ["00000000-0000-0000-0000-000000000001"]}],
                       "no document with id"),
        "unknown title": ([{"question": "rye", "titles": ["Rye"]}], "no document titled 'Rye'"),
        "blank question": ([{"question": "  ", "titles": ["Bread"]}], "question must not be blank"),
    }
    for name, (lines, message) in cases.items():
        path = _write(tmp_path / "q.jsonl", lines)
        assert main(["eval", str(path)]) == 2, name
        assert message in capsys.readouterr().err, name
    ok = _write(tmp_path / "q.jsonl", [QUESTIONS[0]])
    for args in (["--k", "0"], ["--k", "51"], ["--weights", "1-1"], ["--weights", "0:0"]):
        assert main(["eval", str(ok), *args]) == 2, args
        assert "error:" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing.jsonl")]) == 2
    # An unwritable --json is reported after the table, with a failing status.
    assert main(["eval", str(ok), "--json", str(tmp_path / "no" / "such" / "dir.json")]) == 1
    assert "could not write" in capsys.readouterr().err


async def _ingest(api: Api, user: Any) -> dict[str, str]:
    ids = {}
    for name, text in DOCUMENTS.items():
        status, body = await api.request("POST", "/api/documents", user, json={
            "title": text.split("\n", 1)[0].lstrip("# "), "content": text, "source": name,
        })
        assert status == 201, body
        ids[name] = body["document"]["id"]
    return ids


async def test_eval_over_http(api: Api, db: Database) -> None:
    admin = await api.staff(db, "admin")
    agent = await api.staff(db, "agent")
    ids = await _ingest(api, admin)
    body = {"questions": [QUESTIONS[0], {"question": "leaking gaskets", "documents": [ids["seals.md"]]}], "k": [1, 2]}

    for user in (admin, agent):
        status, report = await api.request("POST", "/api/search/eval", user, json=body)
        assert status == 200, report
        figures = _by_retriever(report)
        assert figures["vector"]["recall@1"] == 0.5 and figures["text"]["recall@1"] == 0.5
        assert figures["hybrid 1:1"]["recall@1"] == 1.0 and report["questions"] == 2

    mentor = await api.staff(db, "mentor")
    for user in (mentor, await api.register("Stu"), await api.guest()):
        status, refused = await api.request("POST", "/api/search/eval", user, json=body)
        assert status == 403 and refused["error"]["code"] == "forbidden"
    status, refused = await api.request("POST", "/api/search/eval", None, json=body)
    assert status == 401 and refused["error"]["code"] == "unauthorized"

    bad_bodies = {
        "no questions": {"questions": []},
        "not a list": {"questions": "gasket"},
        "no answer named": {"questions": [{"question": "gasket"}]},
        "k too large": {**body, "k": [51]},
        "k zero": {**body, "k": [0]},
        "weights": {**body, "weights": ["heavy"]},
        "zero weights": {**body, "weights": ["0:0"]},
        "NUL": {"questions": [{"question": "gas\u0000ket", "sources": ["boiler.md"]}]},
        "not a uuid": {"questions": [{"question": "gasket", "documents": ["boiler"]}]},
        "unknown source": {"questions": [{"question": "gasket", "sources": ["rye.md"]}]},
    }
    for name, bad in bad_bodies.items():
        status, refused = await api.request("POST", "/api/search/eval", admin, json=bad)
        assert status == 400 and refused["error"]["code"] == "bad_request", (name, refused)
    status, refused = await api.request("POST", "/api/search/eval", admin, data=b"{not json",
                                        headers={"Content-Type": "application/json"})
    assert status == 400 and refused["error"]["code"] == "bad_request"
    huge = {"questions": [{"question": "x" * 1000, "sources": ["boiler.md"]}] * 1100}
    status, refused = await api.request("POST", "/api/search/eval", admin, json=huge)
    assert status == 413 and refused["error"]["code"] == "too_large"
