"""rag/evaluate.py's formulas on hand-computed cases, weighted fusion, and the fusion
settings; no database."""

from __future__ import annotations

import math
import uuid

import pytest

from handlers.settings import Settings
from rag.evaluate import RetrieverRuns, mrr_at, ndcg_at, percentile, recall_at
from rag.retrieval import Fusion, fuse
from server.factories import fusion as fusion_from
from storage import documents as store


def test_recall_counts_each_relevant_document_once() -> None:
    # Chunks of documents a, x, a, b, y: a at 1 (and again at 3), b at 4.
    ranking = ["a", "x", "a", "b", "y"]
    assert recall_at(ranking, {"a"}, 1) == 1.0
    assert recall_at(ranking, {"b"}, 1) == 0.0
    assert recall_at(ranking, {"a", "b"}, 3) == 0.5  # a's second chunk does not count as b
    assert recall_at(ranking, {"a", "b"}, 4) == 1.0
    assert recall_at(ranking, {"a", "b", "c"}, 10) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        recall_at(ranking, set(), 5)


def test_mrr_is_the_first_relevant_position_within_the_cutoff() -> None:
    ranking = ["x", "y", "b", "a"]
    assert mrr_at(ranking, {"a", "b"}, 10) == pytest.approx(1 / 3)
    assert mrr_at(ranking, {"a"}, 10) == 0.25
    assert mrr_at(ranking, {"a"}, 3) == 0.0  # found at 4, past the cutoff
    assert mrr_at([], {"a"}, 10) == 0.0


def test_ndcg_by_hand() -> None:
    # One relevant document at position 3: 1 / log2(4) = 0.5.
    assert ndcg_at(["x", "y", "a"], {"a"}, 10) == pytest.approx(0.5)
    # Two relevant at 1 and 3 (a's repeat at 2 gains nothing):
    # DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) = 1.6309...
    assert ndcg_at(["a", "a", "b"], {"a", "b"}, 10) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    # The ideal is capped at the cutoff: 3 relevant, k=1, found first → 1.0.
    assert ndcg_at(["c", "a"], {"a", "b", "c"}, 1) == 1.0
    assert ndcg_at(["x"], {"a"}, 10) == 0.0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert percentile(values, 50) == 10.0
    assert percentile(values, 95) == 19.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) == 0.0


def test_averages_over_questions() -> None:
    runs = RetrieverRuns("vector")
    runs.add(["a", "x"], {"a"}, 2.0)  # first: recall@1 1, MRR 1, nDCG 1
    runs.add(["x", "y", "b"], {"b"}, 4.0)  # third: recall@1 0, recall@5 1, MRR 1/3, nDCG 0.5
    runs.add(["x"], {"c"}, 6.0)  # missed
    scores = runs.scores([1, 5, 10])
    assert scores.recall == {1: pytest.approx(1 / 3), 5: pytest.approx(2 / 3), 10: pytest.approx(2 / 3)}
    assert scores.mrr == pytest.approx((1 + 1 / 3) / 3)
    assert scores.ndcg == pytest.approx((1 + 0.5) / 3)
    assert (scores.p50_ms, scores.p95_ms, scores.cutoff) == (4.0, 6.0, 10)
    assert scores.as_dict()["recall@5"] == pytest.approx(0.6667) and "mrr@10" in scores.as_dict()


def _hit(n: int, score: float) -> store.ChunkHit:
    return store.ChunkHit(uuid.UUID(int=n), uuid.UUID(int=100 + n), f"t{n}", f"c{n}", [], score)


def test_weighted_fusion_moves_the_order() -> None:
    vector = [_hit(1, 0.9), _hit(2, 0.8)]
    text = [_hit(3, 2.0), _hit(1, 1.0)]
    # Equal weights: c1 is in both lists and leads; c3 (text 1st) beats c2 (vector 2nd).
    assert [r.content for r in fuse(vector, text, k=10)] == ["c1", "c3", "c2"]
    # Full text weighted down to a quarter: c2 (1/62) now beats c3 (0.25/61).
    light = fuse(vector, text, k=10, fusion=Fusion(vector_weight=1, text_weight=0.25))
    assert [r.content for r in light] == ["c1", "c2", "c3"]
    assert light[0].score == pytest.approx(1 / 61 + 0.25 / 62)
    # Disjoint lists: equal weights interleave them (a tie goes to the vector hit);
    # text weighted up puts both text hits first.
    apart = [_hit(3, 2.0), _hit(4, 1.0)]
    assert [r.content for r in fuse(vector, apart, k=10)] == ["c1", "c3", "c2", "c4"]
    heavy = fuse(vector, apart, k=10, fusion=Fusion(vector_weight=0.25, text_weight=1))
    assert [r.content for r in heavy] == ["c3", "c4", "c1", "c2"]


def test_fusion_settings_are_checked() -> None:
    for bad in ({"mode": "both"}, {"vector_weight": -1.0}, {"vector_weight": 0.0, "text_weight": 0.0}, {"rrf_k": 0}):
        with pytest.raises(ValueError):
            Fusion(**bad)
    assert not Fusion(mode="hybrid", vector_weight=0.0).uses_vector
    assert Fusion(mode="vector").label == "vector" and Fusion(text_weight=0.5).label == "hybrid 1:0.5"

    settings = Settings.from_env({"STUDYHALL_RETRIEVAL_MODE": "Text", "STUDYHALL_RETRIEVAL_TEXT_WEIGHT": "0.5"})
    built = fusion_from(settings.retrieval)
    assert (built.mode, built.text_weight, built.vector_weight) == ("text", 0.5, Settings().retrieval.vector_weight)
    for env in ({"STUDYHALL_RETRIEVAL_MODE": "fused"}, {"STUDYHALL_RETRIEVAL_VECTOR_WEIGHT": "-1"},
                {"STUDYHALL_RETRIEVAL_VECTOR_WEIGHT": "0", "STUDYHALL_RETRIEVAL_TEXT_WEIGHT": "0"},
                {"STUDYHALL_RETRIEVAL_RRF_K": "0"}, {"STUDYHALL_RETRIEVAL_TEXT_WEIGHT": "lots"}):
        with pytest.raises(SystemExit, match="STUDYHALL_RETRIEVAL"):
            Settings.from_env(env)


def test_expected_documents_are_found_by_id_source_tail_or_title() -> None:
    from datetime import UTC, datetime

    from handlers.errors import ApiError
    from handlers.evaluation import EvalQuestion, _Names
    from storage.documents import DocumentRow

    def doc(n: int, title: str, source: str | None) -> DocumentRow:
        return DocumentRow(uuid.UUID(int=n), title, source, None, None, "h", None, datetime.now(UTC), 1)

    names = _Names([doc(1, "Boiler  Manual", "/srv/docs/home/boiler.md"), doc(2, "Old boiler", "/srv/myboiler.md"),
                    doc(3, "Seals", None)])
    find = names.resolve
    # A source names the whole stored path or its last segments, on a "/" boundary only.
    assert find(EvalQuestion("q", sources=("boiler.md",)), "q") == {uuid.UUID(int=1)}
    assert find(EvalQuestion("q", sources=("home/boiler.md",)), "q") == {uuid.UUID(int=1)}
    assert find(EvalQuestion("q", sources=("/srv/myboiler.md",)), "q") == {uuid.UUID(int=2)}
    assert find(EvalQuestion("q", titles=("boiler manual",), document_ids=(uuid.UUID(int=3),)), "q") == {
        uuid.UUID(int=1), uuid.UUID(int=3)}
    for question in (EvalQuestion("q", sources=("oiler.md",)), EvalQuestion("q", titles=("Boiler",)),
                     EvalQuestion("q", document_ids=(uuid.UUID(int=9),))):
        with pytest.raises(ApiError) as refused:
            find(question, "line 7")
        assert refused.value.code == "bad_request" and refused.value.message.startswith("line 7: no document")
