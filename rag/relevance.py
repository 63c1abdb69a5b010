"""Is a retrieved passage about the question? Calibrated confidence from raw search scores.

Why not the fused score: RRF scores are ranks, so the best hit of an off-topic question
scores as high as the best hit of a good one. Why not word overlap: an off-topic passage
that shares a few words with the question ("equal", "0.1") looks relevant. The signal that
carries meaning is the vector similarity of the hit, but its scale depends on the
embedder (hashing gives 0.3 to a good hit; a MiniLM-class model 0.6), so each embedder
family gets its own thresholds, measured on real questions (docs/tutor.md says how, and
bench/relevance_calibration.py measures them again on your own material).

The full-text rank is a second signal: search_text matches only chunks holding every
content word of the question, which is strong evidence when the vector score is on the
fence, but it cannot make an unrelated vector score relevant on its own.

With `hashing` the cosine is itself word overlap, and it splits numbers at the dot, so
"Why does 0.1 + 0.2 not equal 0.3?" scores 0.42 against `IPv4Address('127.0.0.2') ==
IPv4Address('127.0.0.1')` examples, as high as a right answer. So for that family a guard
(`min_coverage`) also asks that the passage hold at least that share of the question's
key terms, numbers kept whole ("0.1" is not in "127.0.0.1"). A neural model needs no guard.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # settings import this module: keep it free of the retrieval stack
    from rag.retrieval import SearchResult


@dataclass(frozen=True)
class Thresholds:
    """Where an embedder's cosine similarities mean "unrelated", "relevant", "certain".

    Confidence is 0 at or below `unrelated`, 0.5 at `relevant`, 1.0 at or above `certain`,
    linear in between; a passage counts as relevant from 0.5. A full-text match of every
    question word adds `text_bonus` when the vector confidence is at least `text_floor`.
    Below `min_coverage` (share of the question's key terms in the passage) confidence is
    held under `RELEVANT`: 0 turns the guard off.
    """

    unrelated: float
    relevant: float
    certain: float
    text_bonus: float = 0.0
    text_floor: float = 0.3
    min_coverage: float = 0.0

    def __post_init__(self) -> None:
        if not self.unrelated < self.relevant < self.certain:
            raise ValueError(f"thresholds must rise: {self.unrelated} < {self.relevant} < {self.certain}")
        if not 0.0 <= self.text_bonus <= 0.5 or not 0.0 <= self.text_floor <= 1.0 or not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError("text_bonus must be within 0..0.5, text_floor and min_coverage within 0..1")


RELEVANT = 0.5  # the confidence from which a passage counts as relevant

# Measured on Python's documentation with on-topic and off-topic questions (docs/tutor.md,
# "Calibrating relevance"); `neural` covers MiniLM-class sentence models (cosine of
# normalised vectors), the default embedder; `hashing` the word-overlap embedder.
DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "hashing": Thresholds(unrelated=0.15, relevant=0.34, certain=0.5, text_bonus=0.35, text_floor=0.0, min_coverage=0.5),
    "neural": Thresholds(unrelated=0.25, relevant=0.42, certain=0.65, text_bonus=0.1, text_floor=0.3),
}


def family(embedder_name: str) -> str:
    """`hashing` for the word-overlap embedder, else `neural` (a sentence model)."""
    return "hashing" if embedder_name.startswith("hashing") else "neural"


def thresholds_for(embedder_name: str, overrides: Mapping[str, Sequence[float] | None] | None = None) -> Thresholds:
    """The thresholds for an embedder: its family's measured default, or the family's
    override `(unrelated, relevant, certain[, text_bonus])` from the settings (the
    default's text floor and coverage guard kept)."""
    kind = family(embedder_name)
    default = DEFAULT_THRESHOLDS[kind]
    values = (overrides or {}).get(kind)
    if not values:
        return default
    bonus = values[3] if len(values) > 3 else default.text_bonus
    return replace(default, unrelated=values[0], relevant=values[1], certain=values[2], text_bonus=bonus)


_TERM = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")
_ASKING = frozenset(
    "explain describe define tell mean means meaning give example examples please know help understand "
    "difference different use using way work works get make"
    " expliquer explique expliquez définir comment pourquoi quoi exemple aide".split()
)


def _stem(word: str) -> str:
    """Crude on purpose: a shared prefix of five letters (plurals, -ing, -ion forms)."""
    if word[0].isdigit():
        return word
    if len(word) > 3 and word.endswith("s"):
        word = word[:-1]
    return word[:5]


def key_terms(text: str) -> set[str]:
    """Content words (stemmed) and whole numbers of a text, without stopwords."""
    from rag.embeddings import STOPWORDS  # lazily: settings import this module

    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return {_stem(w) for w in _TERM.findall(text)
            if (w[0].isdigit() or len(w) > 2) and w not in STOPWORDS and w not in _ASKING}


def coverage(question: str, hit: SearchResult) -> float | None:
    """Share of the question's key terms found in the hit's title, headings and text."""
    asked = key_terms(question)
    if not asked:
        return None
    found = key_terms(" ".join([hit.title, *hit.heading_path, hit.content]))
    return round(len(asked & found) / len(asked), 3)


def confidence(similarity: float | None, text_rank: float | None, t: Thresholds,
               covered: float | None = None) -> float:
    """0..1: how sure we are that a hit with these raw scores is about the question."""
    sim = similarity if similarity is not None else t.unrelated
    if sim <= t.unrelated:
        base = 0.0
    elif sim < t.relevant:
        base = RELEVANT * (sim - t.unrelated) / (t.relevant - t.unrelated)
    elif sim < t.certain:
        base = RELEVANT + (1 - RELEVANT) * (sim - t.relevant) / (t.certain - t.relevant)
    else:
        base = 1.0
    if text_rank is not None and text_rank > 0 and base >= t.text_floor:
        base += t.text_bonus
    if covered is not None and covered < t.min_coverage:
        base = min(base, RELEVANT - 0.01)
    return round(min(1.0, base), 3)


@dataclass(frozen=True)
class Judged:
    """A search hit with its calibrated confidence."""

    hit: SearchResult
    confidence: float
    coverage: float | None = None

    @property
    def relevant(self) -> bool:
        return self.confidence >= RELEVANT


@dataclass(frozen=True)
class Judgement:
    """Every hit judged, best first, and the record the decision log keeps of why."""

    judged: list[Judged]  # in the search's order
    embedder: str
    thresholds: Thresholds

    @property
    def best(self) -> float:
        return max((j.confidence for j in self.judged), default=0.0)

    def log_details(self) -> dict[str, object]:
        """For `tutor_decisions.details.relevance`: the scores behind the decision."""
        return {
            "embedder": self.embedder,
            "thresholds": asdict(self.thresholds),
            "best_confidence": self.best,
            "hits": [
                {
                    "chunk_id": str(j.hit.chunk_id),
                    "title": j.hit.title,
                    "similarity": None if j.hit.similarity is None else round(j.hit.similarity, 4),
                    "text_rank": None if j.hit.text_rank is None else round(j.hit.text_rank, 4),
                    "coverage": j.coverage,
                    "confidence": j.confidence,
                }
                for j in self.judged
            ],
        }


def judge(question: str, hits: Sequence[SearchResult], embedder_name: str, t: Thresholds) -> Judgement:
    """Confidence for each hit, in the search's order (the fused ranking the model sees)."""
    judged = []
    for h in hits:
        covered = coverage(question, h) if t.min_coverage else None
        judged.append(Judged(h, confidence(h.similarity, h.text_rank, t, covered), covered))
    return Judgement(judged, embedder_name, t)
