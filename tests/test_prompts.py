"""System prompts and the token-budgeted message builder (pure functions, real tokenizer)."""
from __future__ import annotations

import re

import pytest

from rag.prompts import (
    CANNOT_HELP,
    SESSION_TYPES,
    BuiltPrompt,
    Passage,
    build_messages,
    cited_passages,
    system_prompt,
)
from rag.tokens import count_tokens

OVERHEAD, PRIMING = 4, 3


def prompt_size(built: BuiltPrompt) -> int:
    return sum(count_tokens(m["content"]) + OVERHEAD for m in built.messages) + PRIMING


def passage(i: int, words: int = 60) -> Passage:
    body = " ".join(f"fact{i}-{n}" for n in range(words)) + "."
    return Passage(f"chunk-{i}", f"doc-{i}", f"Title {i}", body, 0.9 - i / 100)


def history(turns: int) -> list[dict[str, str]]:
    return [
        {"role": "user" if n % 2 == 0 else "assistant", "content": f"turn {n} " + "blah " * 30}
        for n in range(turns)
    ]


def test_system_prompts_differ_by_session_type_and_carry_the_rules() -> None:
    prompts = {t: system_prompt(t) for t in SESSION_TYPES}
    assert len(set(prompts.values())) == 3
    for text in prompts.values():
        assert CANNOT_HELP in text and "[1]" in text
    socratic = system_prompt("lesson", socratic=True, course="Biology 101")
    assert "Socratic" in socratic and "do not give the final answer" in socratic
    assert "Socratic" not in prompts["lesson"]
    assert "Course: Biology 101" in socratic
    with pytest.raises(ValueError):
        system_prompt("party")  # type: ignore[arg-type]


def test_passages_are_numbered_with_ids_and_titles() -> None:
    passages = [passage(1), passage(2)]
    built = build_messages("sys", [], passages, "What is fact1?", 4000)
    user = built.messages[-1]
    assert user["role"] == "user"
    assert '[1] (chunk chunk-1, "Title 1")' in user["content"]
    assert '[2] (chunk chunk-2, "Title 2")' in user["content"]
    assert passages[0].content in user["content"]
    assert user["content"].rstrip().endswith("What is fact1?")
    assert built.passages == passages
    assert built.messages[0] == {"role": "system", "content": "sys"}


@pytest.mark.parametrize("budget", [300, 600, 1000, 2500])
def test_budget_is_respected_and_priorities_hold(budget: int) -> None:
    system = system_prompt("interactive")
    passages = [passage(i) for i in range(1, 8)]
    turns = history(40)
    question = "Can you explain fact3 and how it relates to fact5?"
    built = build_messages(system, turns, passages, question, budget)
    assert prompt_size(built) == built.prompt_tokens <= budget
    assert built.messages[0]["content"] == system  # system prompt always, whole
    assert question in built.messages[-1]["content"]  # question always
    kept = built.messages[1:-1]
    assert kept == turns[len(turns) - len(kept):]  # newest history kept, no gaps
    numbered = re.findall(r"^\[(\d+)\] \(chunk (\S+),", built.messages[-1]["content"], re.M)
    assert [int(n) for n, _ in numbered] == list(range(1, len(built.passages) + 1))
    assert [c for _, c in numbered] == [p.chunk_id for p in built.passages]
    # best passages first: included ones are a subsequence of the ranking
    ranks = [passages.index(p) for p in built.passages]
    assert ranks == sorted(ranks)


def test_more_budget_keeps_more_context() -> None:
    system = system_prompt("interactive")
    passages = [passage(i) for i in range(1, 8)]
    small = build_messages(system, history(40), passages, "q?", 700)
    large = build_messages(system, history(40), passages, "q?", 3000)
    assert len(large.passages) > len(small.passages) >= 1
    assert len(large.messages) > len(small.messages)


def test_huge_question_is_shortened_but_kept_and_tiny_budget_refused() -> None:
    question = "why " * 5000
    built = build_messages("sys", history(4), [passage(1)], question, 500)
    assert built.prompt_tokens <= 500
    assert built.messages[-1]["content"].count("why") > 100
    with pytest.raises(ValueError):
        build_messages(system_prompt("lesson"), [], [], "q", 20)


def test_no_passages_is_stated() -> None:
    built = build_messages("sys", [], [], "Who won the match?", 500)
    assert built.passages == []
    assert "No course passages" in built.messages[-1]["content"]


def test_cited_passages_follow_the_answer() -> None:
    passages = [passage(1), passage(2), passage(3)]
    answer = "First [2], then [1] and again [2]; [9] does not exist."
    assert cited_passages(answer, passages) == [passages[1], passages[0]]
    assert cited_passages("no citations", passages) == []


def test_citations_say_the_number_the_answer_cites_them_by() -> None:
    """The widget links `[n]` to the citation whose `n` is n: the list is in order of first
    citation, so position alone would link [2] to passage 1's source here."""
    from handlers.tutor.answer import numbered

    passages = [passage(1), passage(2), passage(3)]
    cited = cited_passages("First [3], then [1].", passages)
    assert [(c["n"], c["chunk_id"]) for c in numbered(cited, passages)] == [
        (3, passages[2].chunk_id), (1, passages[0].chunk_id)]


def test_passage_from_search_result_and_citation() -> None:
    row = {"chunk_id": "c", "document_id": "d", "title": "T", "content": "x", "score": 0.5}
    p = Passage.from_mapping(row)
    assert p.citation() == {"chunk_id": "c", "document_id": "d", "title": "T", "score": 0.5, "source": None}
    linked = Passage.from_mapping({**row, "source": "https://example.org/notes"})
    assert linked.citation()["source"] == "https://example.org/notes"
