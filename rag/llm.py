"""Chat model access through the `openai` client (OpenAI or any compatible server).

Why our own retry loop instead of the client's: retries must be bounded in total time, and
a stream must never be retried once text has reached the student (that would duplicate it).
So the client runs with `max_retries=0` and `ChatModel` decides.

    async with model.stream(messages) as answer:      # closing it closes the HTTP stream
        async for delta in answer:
            ...                                        # emit message:delta
    answer.result.prompt_tokens, answer.result.latency_ms, answer.result.model, ...
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import openai

from rag.tokens import count_tokens

Message = Mapping[str, str]

# USD per 1M tokens (input, output). Unknown and local models cost 0.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
}

_RETRY_STATUS = {408, 409, 429}


class ModelUnavailable(Exception):
    """The model could not produce (the rest of) an answer; `reason` says why.

    `partial` holds text already streamed when a stream broke midway.
    """

    def __init__(self, reason: str, partial: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial


@dataclass(frozen=True)
class LLMConfig:
    """How to reach the model and how hard to try."""

    base_url: str | None = None  # None: api.openai.com
    api_key: str = "not-needed"
    model: str = "gpt-4o-mini"
    timeout: float = 30.0  # per request: connect, and silence between chunks
    max_attempts: int = 3
    total_timeout: float = 45.0  # all attempts together, until the first delta
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    temperature: float | None = 0.3
    max_tokens: int | None = 800
    stream_usage: bool = True  # ask for usage in the stream; off for servers that reject it
    prices: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    def price(self, model: str) -> tuple[float, float]:
        """(input, output) USD per 1M tokens; longest matching name prefix wins, else 0."""
        names = [n for n in self.prices if model == n or model.startswith(n + "-")]
        return self.prices[max(names, key=len)] if names else (0.0, 0.0)


@dataclass(frozen=True)
class StreamResult:
    """What an answer cost and how it went, for message metadata."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool  # True when the server sent no usage and we counted ourselves
    latency_ms: int
    first_token_ms: int | None
    cost_usd: float
    finish_reason: str | None = None


def count_message_tokens(messages: Sequence[Message]) -> int:
    """Prompt size the way OpenAI counts chat messages (content plus a few tokens each)."""
    return sum(count_tokens(str(m.get("content", ""))) + 4 for m in messages) + 3


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, (openai.APIConnectionError, TimeoutError)):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in _RETRY_STATUS or exc.status_code >= 500
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {exc.message}"
    if isinstance(exc, (openai.APITimeoutError, TimeoutError)):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        return "connection failed"
    return f"{type(exc).__name__}: {exc}"


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (429/503 `retry-after`), if it said."""
    if not isinstance(exc, openai.APIStatusError):
        return None
    value = exc.response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class ChatModel:
    """One per process: holds the HTTP client (connection pool) for the configured model."""

    def __init__(self, config: LLMConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key,
            timeout=config.timeout,
            max_retries=0,  # we retry ourselves, see module docstring
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> ChatModel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def stream(self, messages: Sequence[Message]) -> ChatStream:
        """Stream an answer: iterate for text deltas, then read `.result`."""
        return ChatStream(self, list(messages))

    async def complete(self, messages: Sequence[Message]) -> str:
        """Short non-streamed answer (e.g. a decision); retried like `stream`."""
        return (await self.complete_result(messages)).text

    async def complete_result(self, messages: Sequence[Message]) -> StreamResult:
        """`complete`, with usage, latency and cost."""
        started = time.monotonic()
        deadline = asyncio.get_running_loop().time() + self.config.total_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout_at(deadline):
                    response = await self._client.chat.completions.create(
                        **self._request_args(messages)
                    )
                break
            except Exception as exc:  # broad on purpose: sorted by _retryable
                await self._backoff_or_raise(exc, attempt, deadline)
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content if choice else None) or ""
        usage = response.usage
        return self._result(
            messages,
            text,
            response.model or self.config.model,
            (usage.prompt_tokens, usage.completion_tokens) if usage else None,
            started,
            None,
            choice.finish_reason if choice else None,
        )

    # ---- internals shared with ChatStream -------------------------------------------
    def _request_args(self, messages: Sequence[Message], **extra: Any) -> dict[str, Any]:
        args: dict[str, Any] = {"model": self.config.model, "messages": list(messages), **extra}
        if self.config.temperature is not None:
            args["temperature"] = self.config.temperature
        if self.config.max_tokens is not None:
            args["max_tokens"] = self.config.max_tokens
        return args

    async def _backoff_or_raise(self, exc: BaseException, attempt: int, deadline: float) -> None:
        """Sleep before the next attempt, or raise ModelUnavailable if we should stop."""
        if not _retryable(exc):
            raise ModelUnavailable(f"model request rejected ({_describe(exc)})") from exc
        if attempt >= self.config.max_attempts:
            raise ModelUnavailable(
                f"model unavailable after {attempt} attempts ({_describe(exc)})"
            ) from exc
        # Exponential backoff with "equal jitter": spread retries, never retry instantly.
        ceiling = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        delay = max(delay, _retry_after(exc) or 0.0)
        remaining = deadline - asyncio.get_running_loop().time()
        if delay >= remaining:
            raise ModelUnavailable(
                f"model unavailable within {self.config.total_timeout:g}s ({_describe(exc)})"
            ) from exc
        await asyncio.sleep(delay)

    def _result(
        self,
        messages: Sequence[Message],
        text: str,
        model: str,
        usage: tuple[int, int] | None,
        started: float,
        first_token_at: float | None,
        finish_reason: str | None,
    ) -> StreamResult:
        if usage is None:
            prompt_tokens, completion_tokens = count_message_tokens(messages), count_tokens(text)
        else:
            prompt_tokens, completion_tokens = usage
        price_in, price_out = self.config.price(model)
        return StreamResult(
            text=text,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            usage_estimated=usage is None,
            latency_ms=round((time.monotonic() - started) * 1000),
            first_token_ms=(
                round((first_token_at - started) * 1000) if first_token_at is not None else None
            ),
            cost_usd=(prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000,
            finish_reason=finish_reason,
        )


class ChatStream:
    """An answer being streamed: an async iterator of text deltas, then `.result`.

    Use it as `async with`; leaving the block (normally, by error or by cancellation of
    the consuming task) closes the HTTP response so the server stops generating.
    """

    def __init__(self, model: ChatModel, messages: list[Message]) -> None:
        self._model = model
        self._messages = messages
        self._gen = self._run()
        self._result: StreamResult | None = None

    @property
    def result(self) -> StreamResult:
        """Usage, latency, model and cost; available once the stream has finished."""
        if self._result is None:
            raise RuntimeError("the stream has not finished")
        return self._result

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self) -> AsyncGenerator[str, None]:
        model, config = self._model, self._model.config
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = loop.time() + config.total_timeout
        extra: dict[str, Any] = {"stream": True}
        if config.stream_usage:
            extra["stream_options"] = {"include_usage": True}
        args = model._request_args(self._messages, **extra)
        attempt = 0
        parts: list[str] = []
        while True:
            attempt += 1
            response = None
            try:
                # Until the first delta, every wait is bounded by the overall deadline too.
                async with asyncio.timeout_at(deadline):
                    response = await model._client.chat.completions.create(**args)
                iterator = response.__aiter__()
                name, usage, finish, first_at = config.model, None, None, None
                while True:
                    if first_at is None:
                        async with asyncio.timeout_at(deadline):
                            chunk = await anext(iterator, None)
                    else:
                        # Never `yield` inside a timeout block: the consumer runs in between.
                        async with asyncio.timeout(config.timeout):
                            chunk = await anext(iterator, None)
                    if chunk is None:
                        break
                    name = chunk.model or name
                    if chunk.usage is not None:
                        usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    for choice in chunk.choices:
                        finish = choice.finish_reason or finish
                        delta = choice.delta.content if choice.delta else None
                        if delta:
                            if first_at is None:
                                first_at = time.monotonic()
                            parts.append(delta)
                            yield delta
                break
            except Exception as exc:  # broad on purpose: sorted below
                if parts:
                    raise ModelUnavailable(
                        f"answer interrupted ({_describe(exc)})", partial="".join(parts)
                    ) from exc
                await model._backoff_or_raise(exc, attempt, deadline)
            finally:
                if response is not None:
                    await response.close()
        self._result = model._result(
            self._messages, "".join(parts), name, usage, started, first_at, finish
        )
