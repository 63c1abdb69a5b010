"""Calibrated relevance (rag/relevance.py): raw search scores to a confidence, per embedder."""
from __future__ import annotations

import uuid

import pytest

from handlers.settings import Settings
from rag.relevance import (
    DEFAULT_THRESHOLDS,
    RELEVANT,
    Thresholds,
    confidence,
    coverage,
    judge,
    key_terms,
    thresholds_for,
)
from rag.retrieval import SearchResult

T = Thresholds(unrelated=0.2, relevant=0.4, certain=0.6, text_bonus=0.1, text_floor=0.3)


def hit(content: str, similarity: float | None, text_rank: float | None = None) -> SearchResult:
    return SearchResult(uuid.uuid4(), uuid.uuid4(), "Title", content, 0.03, [], similarity, text_rank)


def test_confidence_rises_through_the_thresholds() -> None:
    assert confidence(0.1, None, T) == 0.0 == confidence(None, None, T)
    assert confidence(0.3, None, T) == 0.25
    assert confidence(0.4, None, T) == RELEVANT == 0.5
    assert confidence(0.5, None, T) == 0.75 and confidence(0.9, None, T) == 1.0


def test_full_text_match_helps_only_a_vector_score_already_near() -> None:
    assert confidence(0.35, 0.1, T) == 0.475  # 0.375 + 0.1: still not relevant on its own strength
    assert confidence(0.25, 0.1, T) == 0.125  # below the floor: no bonus
    assert confidence(0.39, 0.1, T) >= RELEVANT


def test_numbers_stay_whole_so_an_ip_address_does_not_cover_a_decimal() -> None:
    question = "Why does 0.1 + 0.2 not equal 0.3?"
    assert key_terms(question) == {"0.1", "0.2", "0.3", "equal"}
    ip = hit("IPv4Address('127.0.0.2') == IPv4Address('127.0.0.1') is False: not equal.", 0.42)
    floats = hit("Summing three values of 0.1 may not yield exactly 0.3, and 0.1 + 0.2 is not equal to it.", 0.42)
    assert coverage(question, ip) == 0.25 and coverage(question, floats) == 1.0
    hashing = DEFAULT_THRESHOLDS["hashing"]
    judged = judge(question, [ip, floats], "hashing-384-v1", hashing).judged
    assert not judged[0].relevant and judged[1].relevant  # same cosine, only one is about it


def test_overrides_per_family_keep_the_measured_guards() -> None:
    neural = thresholds_for("sentence-transformers:all-MiniLM-L6-v2", {"neural": (0.1, 0.3, 0.5)})
    assert (neural.unrelated, neural.relevant, neural.certain) == (0.1, 0.3, 0.5)
    assert neural.text_bonus == DEFAULT_THRESHOLDS["neural"].text_bonus
    assert thresholds_for("hashing-384-v1", {"neural": (0.1, 0.3, 0.5)}) == DEFAULT_THRESHOLDS["hashing"]
    settings = Settings.from_env({"STUDYHALL_TUTOR_RELEVANCE_HASHING": "0.1,0.3,0.5,0.2"})
    assert settings.tutor.relevance_hashing == (0.1, 0.3, 0.5, 0.2)
    with pytest.raises(SystemExit, match="STUDYHALL_TUTOR_RELEVANCE_NEURAL"):
        Settings.from_env({"STUDYHALL_TUTOR_RELEVANCE_NEURAL": "0.5,0.4,0.6"})
