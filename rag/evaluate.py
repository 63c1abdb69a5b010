"""Retrieval metrics for `studyhall eval`: pure functions over rankings, no database.

A question names the documents that answer it; search returns chunks. A ranking here is
the list of document ids of the chunks search returned, in order (what the tutor reads:
several chunks may come from one document). Relevance is by document, each relevant
document counted once, at the position of its first chunk:

- recall@k: the share of the question's relevant documents that have a chunk among the
  first k results;
- MRR@k: 1 / the position of the first relevant chunk within the first k (0 if none);
- nDCG@k: binary gains, a document's gain at its first chunk only (later chunks of the
  same document gain nothing), over the ideal ranking of min(k, |relevant|) documents.

With one relevant document per question (the usual case) recall@k is the hit rate and
nDCG@k is 1 / log2(1 + position). Averages are over questions; latency percentiles are
nearest-rank.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any


def first_positions(ranking: Sequence[Hashable], relevant: set[Hashable], k: int) -> list[int]:
    """1-based positions within the first k where a relevant document appears first."""
    seen: set[Hashable] = set()
    positions = []
    for position, doc in enumerate(ranking[:k], start=1):
        if doc in relevant and doc not in seen:
            seen.add(doc)
            positions.append(position)
    return positions


def recall_at(ranking: Sequence[Hashable], relevant: set[Hashable], k: int) -> float:
    if not relevant:
        raise ValueError("a question needs at least one relevant document")
    return len(first_positions(ranking, relevant, k)) / len(relevant)


def mrr_at(ranking: Sequence[Hashable], relevant: set[Hashable], k: int) -> float:
    positions = first_positions(ranking, relevant, k)
    return 1.0 / positions[0] if positions else 0.0


def ndcg_at(ranking: Sequence[Hashable], relevant: set[Hashable], k: int) -> float:
    if not relevant:
        raise ValueError("a question needs at least one relevant document")
    dcg = sum(1.0 / math.log2(p + 1) for p in first_positions(ranking, relevant, k))
    ideal = sum(1.0 / math.log2(p + 1) for p in range(1, min(k, len(relevant)) + 1))
    return dcg / ideal


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


@dataclass(frozen=True)
class RetrieverScores:
    """One retriever's averages over a set of questions."""

    retriever: str
    questions: int
    recall: dict[int, float]
    mrr: float
    ndcg: float
    cutoff: int
    p50_ms: float
    p95_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "retriever": self.retriever,
            "questions": self.questions,
            **{f"recall@{k}": round(v, 4) for k, v in sorted(self.recall.items())},
            f"mrr@{self.cutoff}": round(self.mrr, 4),
            f"ndcg@{self.cutoff}": round(self.ndcg, 4),
            "p50_ms": round(self.p50_ms, 2),
            "p95_ms": round(self.p95_ms, 2),
        }


@dataclass
class RetrieverRuns:
    """What one retriever returned for each question, and how long each search took."""

    retriever: str
    rankings: list[list[Hashable]] = field(default_factory=list)
    relevant: list[set[Hashable]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, ranking: list[Hashable], relevant: set[Hashable], latency_ms: float) -> None:
        self.rankings.append(ranking)
        self.relevant.append(relevant)
        self.latencies_ms.append(latency_ms)

    def scores(self, ks: Sequence[int]) -> RetrieverScores:
        """Averages at the recall cutoffs `ks`; MRR and nDCG at the largest of them."""
        n = len(self.rankings)
        if n == 0:
            raise ValueError("no questions were run")
        cutoff = max(ks)
        pairs = list(zip(self.rankings, self.relevant, strict=True))
        return RetrieverScores(
            retriever=self.retriever,
            questions=n,
            recall={k: sum(recall_at(r, rel, k) for r, rel in pairs) / n for k in sorted(set(ks))},
            mrr=sum(mrr_at(r, rel, cutoff) for r, rel in pairs) / n,
            ndcg=sum(ndcg_at(r, rel, cutoff) for r, rel in pairs) / n,
            cutoff=cutoff,
            p50_ms=percentile(self.latencies_ms, 50),
            p95_ms=percentile(self.latencies_ms, 95),
        )
