"""ChatModel against tests/fakellm.py through the real `openai` client: streaming, usage,
retries, bounds, no duplicate text, cancellation."""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import openai
import pytest

from rag.llm import ChatModel, LLMConfig, ModelUnavailable
from rag.tokens import count_tokens
from tests.fakellm import FakeLLM, pieces, rough_tokens

REPLY = "Photosynthesis turns light, water and carbon dioxide into glucose and oxygen [1]."
MESSAGES = [
    {"role": "system", "content": "You are a tutor."},
    {"role": "user", "content": "What is photosynthesis?"},
]


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    async with FakeLLM(reply=REPLY) as server:
        yield server


def config(llm: FakeLLM, **overrides: object) -> LLMConfig:
    base: dict[str, object] = dict(
        base_url=llm.base_url,
        api_key="test",
        model="fake-model",
        timeout=2.0,
        max_attempts=3,
        total_timeout=5.0,
        backoff_base=0.01,
        backoff_max=0.05,
    )
    base.update(overrides)
    return LLMConfig(**base)  # type: ignore[arg-type]


async def collect(model: ChatModel, got: list[str] | None = None) -> tuple[list[str], object]:
    got = [] if got is None else got
    async with model.stream(MESSAGES) as answer:
        async for delta in answer:
            got.append(delta)
    return got, answer.result


async def test_stream_deltas_reassemble_and_usage_is_captured(llm: FakeLLM) -> None:
    async with ChatModel(config(llm)) as model:
        deltas, result = await collect(model)
    assert len(deltas) == len(pieces(REPLY)) > 5
    assert "".join(deltas) == REPLY == result.text
    prompt = "\n".join(m["content"] for m in MESSAGES)
    assert (result.prompt_tokens, result.completion_tokens) == (rough_tokens(prompt), rough_tokens(REPLY))
    assert result.usage_estimated is False
    assert result.model == "fake-model"
    assert result.finish_reason == "stop"
    assert result.latency_ms >= result.first_token_ms >= 0
    sent = llm.chat_requests[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == MESSAGES


async def test_usage_is_counted_when_the_server_sends_none() -> None:
    async with FakeLLM(reply=REPLY, send_usage=False) as llm:
        async with ChatModel(config(llm)) as model:
            _, result = await collect(model)
    assert result.usage_estimated is True
    assert result.completion_tokens == count_tokens(REPLY)
    assert result.prompt_tokens > count_tokens("You are a tutor.What is photosynthesis?")


async def test_stream_usage_can_be_switched_off(llm: FakeLLM) -> None:
    async with ChatModel(config(llm, stream_usage=False)) as model:
        deltas, result = await collect(model)
    assert "stream_options" not in llm.chat_requests[-1]
    assert "".join(deltas) == REPLY and result.usage_estimated is True


async def test_cost_uses_the_price_table(llm: FakeLLM) -> None:
    async with ChatModel(config(llm, prices={"fake-model": (1.0, 4.0)})) as model:
        _, result = await collect(model)
    expected = (result.prompt_tokens * 1.0 + result.completion_tokens * 4.0) / 1_000_000
    assert result.cost_usd == pytest.approx(expected) and result.cost_usd > 0
    async with ChatModel(config(llm, prices={})) as model:
        _, free = await collect(model)
    assert free.cost_usd == 0.0


def test_price_lookup_and_env_config() -> None:
    from handlers.settings import Settings
    from server.factories import chat_model

    settings = Settings.from_env(
        {
            "STUDYHALL_LLM_BASE_URL": "http://127.0.0.1:9/v1",
            "STUDYHALL_LLM_MODEL": "local-model",
            "STUDYHALL_LLM_PRICES": '{"local-model": [0.5, 1.5]}',
            "STUDYHALL_LLM_TIMEOUT": "7",
            "STUDYHALL_LLM_TOTAL_TIMEOUT": "12",
            "STUDYHALL_LLM_STREAM_USAGE": "0",
        }
    )
    model = chat_model(settings.tutor)
    assert model is not None
    cfg = model.config
    assert cfg.model == "local-model" and cfg.timeout == 7.0 and cfg.total_timeout == 12.0 and cfg.stream_usage is False
    assert cfg.price("local-model") == (0.5, 1.5)
    assert cfg.price("gpt-4o-mini-2024-07-18") == cfg.prices["gpt-4o-mini"]
    assert cfg.price("gpt-4o-2024-08-06") == cfg.prices["gpt-4o"]
    assert cfg.price("mystery") == (0.0, 0.0)
    assert chat_model(Settings.from_env({}).tutor) is None


async def test_retries_after_500_then_succeeds(llm: FakeLLM) -> None:
    llm.fail_next(2, status=500)
    async with ChatModel(config(llm)) as model:
        deltas, _ = await collect(model)
    assert "".join(deltas) == REPLY
    assert len(llm.chat_requests) == 3


async def test_retries_after_429_and_waits_retry_after(llm: FakeLLM) -> None:
    llm.rate_limit_next(1, retry_after=0.3)
    async with ChatModel(config(llm)) as model:
        started = time.monotonic()
        deltas, _ = await collect(model)
    assert time.monotonic() - started >= 0.3
    assert "".join(deltas) == REPLY
    assert len(llm.chat_requests) == 2


async def test_gives_up_after_max_attempts(llm: FakeLLM) -> None:
    llm.fail_next(10, status=503)
    async with ChatModel(config(llm, max_attempts=3)) as model:
        with pytest.raises(ModelUnavailable, match="3 attempts") as err:
            await collect(model)
    assert "503" in err.value.reason
    assert len(llm.chat_requests) == 3


async def test_gives_up_within_total_time(llm: FakeLLM) -> None:
    llm.fail_next(1000, status=500)
    cfg = config(llm, max_attempts=1000, total_timeout=0.6, backoff_base=0.1, backoff_max=0.2)
    async with ChatModel(cfg) as model:
        started = time.monotonic()
        with pytest.raises(ModelUnavailable):
            await collect(model)
    assert time.monotonic() - started < 1.0
    assert 2 <= len(llm.chat_requests) < 10


async def test_client_errors_are_not_retried(llm: FakeLLM) -> None:
    llm.fail_next(1, status=400)
    async with ChatModel(config(llm)) as model:
        with pytest.raises(ModelUnavailable, match="rejected"):
            await collect(model)
    assert len(llm.chat_requests) == 1


async def test_no_retry_once_text_was_streamed(llm: FakeLLM) -> None:
    llm.break_stream_after(3)
    got: list[str] = []
    async with ChatModel(config(llm)) as model:
        with pytest.raises(ModelUnavailable, match="interrupted") as err:
            await collect(model, got)
    partial = "".join(pieces(REPLY)[:3])
    assert "".join(got) == partial == err.value.partial  # nothing repeated
    assert len(llm.chat_requests) == 1


async def test_hanging_server_is_bounded_by_timeouts(llm: FakeLLM) -> None:
    llm.hang_next(100)
    cfg = config(llm, timeout=0.2, total_timeout=0.7, max_attempts=10)
    async with ChatModel(cfg) as model:
        started = time.monotonic()
        with pytest.raises(ModelUnavailable, match="timed out"):
            await collect(model)
        elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.2
    assert len(llm.chat_requests) >= 2  # it did retry the timeouts


async def test_cancelling_the_consumer_closes_the_stream() -> None:
    long_reply = " ".join(f"word{i}" for i in range(400))
    async with FakeLLM(reply=long_reply, token_delay=0.01) as llm:
        async with ChatModel(config(llm)) as model:
            got: list[str] = []
            first = asyncio.Event()

            async def consume() -> None:
                async with model.stream(MESSAGES) as answer:
                    async for delta in answer:
                        got.append(delta)
                        first.set()

            task = asyncio.create_task(consume())
            await asyncio.wait_for(first.wait(), 2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):
                if llm.disconnects:
                    break
                await asyncio.sleep(0.02)
    assert llm.disconnects == 1
    assert len(got) < 50


async def test_leaving_the_block_early_closes_the_stream() -> None:
    long_reply = " ".join(f"word{i}" for i in range(400))
    async with FakeLLM(reply=long_reply, token_delay=0.01) as llm:
        async with ChatModel(config(llm)) as model:
            async with model.stream(MESSAGES) as answer:
                async for _ in answer:
                    break
            for _ in range(100):
                if llm.disconnects:
                    break
                await asyncio.sleep(0.02)
    assert llm.disconnects == 1


async def test_complete_retries_and_reports_usage(llm: FakeLLM) -> None:
    llm.fail_next(1)
    llm.queue_replies("answer")
    async with ChatModel(config(llm)) as model:
        assert await model.complete(MESSAGES) == "answer"
        result = await model.complete_result(MESSAGES)
    assert result.text == REPLY and result.completion_tokens == rough_tokens(REPLY)
    assert llm.chat_requests[-1].get("stream") is None
    assert len(llm.chat_requests) == 3


async def test_complete_is_bounded_when_the_server_hangs(llm: FakeLLM) -> None:
    llm.hang_next(100)
    async with ChatModel(config(llm, timeout=5.0, total_timeout=0.4)) as model:
        started = time.monotonic()
        with pytest.raises(ModelUnavailable):
            await model.complete(MESSAGES)
    assert time.monotonic() - started < 1.0


async def test_fake_server_embeddings_and_models(llm: FakeLLM) -> None:
    client = openai.AsyncOpenAI(base_url=llm.base_url, api_key="test", max_retries=0)
    try:
        texts = ["the cell membrane", "the cell membrane", "ocean tides and the moon"]
        floats = await client.embeddings.create(model="e", input=texts, encoding_format="float")
        default = await client.embeddings.create(model="e", input=texts)  # base64 on the wire
        models = await client.models.list()
    finally:
        await client.close()
    a, b, c = (d.embedding for d in floats.data)
    assert len(a) == llm.embedding_dim and a == b != c
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-6)
    assert default.data[0].embedding == pytest.approx(a, abs=1e-6)
    assert [m.id for m in models.data] == ["fake-model"]


async def test_tutor_flow_prompt_reaches_the_model_and_citations_resolve() -> None:
    """The way the tutor handler uses these pieces together, end to end over HTTP."""
    from rag.decide import SentinelFilter, model_cannot_help
    from rag.prompts import Passage, build_messages, cited_passages, system_prompt
    from tests.fakellm import echo_passages

    passages = [
        Passage("c1", "d1", "Light reactions", "Light splits water in the thylakoids.", 0.8),
        Passage("c2", "d2", "Calvin cycle", "The Calvin cycle fixes carbon dioxide.", 0.7),
    ]
    built = build_messages(system_prompt("lesson"), [], passages, "How do plants use light?", 2000)
    async with FakeLLM(reply=echo_passages) as llm, ChatModel(config(llm)) as model:
        guard, shown = SentinelFilter(), []
        async with model.stream(built.messages) as answer:
            async for delta in answer:
                shown.append(guard.feed(delta))
        shown.append(guard.flush())
        prompt = llm.chat_requests[-1]["messages"][-1]["content"]
        assert '[1] (chunk c1, "Light reactions")' in prompt
        assert "Light splits water in the thylakoids." in prompt
        assert "".join(shown) == answer.result.text == "According to the course material [1] [2]."
        assert cited_passages(answer.result.text, built.passages) == passages
        assert not guard.triggered and not model_cannot_help(answer.result.text)

        empty = build_messages(system_prompt("lesson"), [], [], "How do plants use light?", 2000)
        guard, shown = SentinelFilter(), []
        async with model.stream(empty.messages) as answer:
            async for delta in answer:
                shown.append(guard.feed(delta))
        shown.append(guard.flush())
        assert guard.triggered and "".join(shown) == ""  # the student never sees the sentinel
        assert model_cannot_help(answer.result.text)
