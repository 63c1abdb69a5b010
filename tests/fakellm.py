"""A small OpenAI-compatible HTTP server for tests, driven through the real `openai` client.

Why a real server instead of mocking the client: retries, timeouts, SSE parsing and stream
closing all live inside `openai`/httpx, and only a real socket exercises them.

    async with FakeLLM(reply="Hello there.") as llm:
        client = openai.AsyncOpenAI(base_url=llm.base_url, api_key="test")
        ...
        assert "passage text" in llm.chat_requests[-1]["messages"][-1]["content"]

Faults are armed per test: `fail_next(n)`, `rate_limit_next(n, retry_after)`, `hang_next(n)`,
`break_stream_after(chunks)`; `token_delay` slows streaming; `disconnects` counts streams the
client closed early.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import re
import socket
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

Reply = str | Callable[[dict[str, Any]], str]

_PIECE = re.compile(r"\s*\S+\s*|\s+")
_WORD = re.compile(r"\w+", re.UNICODE)
_PASSAGE_HEADER = re.compile(r"^\[(\d+)\] \(chunk [^)]*\)", re.MULTILINE)


@dataclass
class RecordedRequest:
    """One request the server received (including ones it then failed on purpose)."""

    method: str
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None


@dataclass
class _Faults:
    fail: deque[int] = field(default_factory=deque)  # status codes, one per request
    rate_limit: deque[float] = field(default_factory=deque)  # retry-after seconds
    hang: int = 0
    break_after: deque[int] = field(default_factory=deque)  # chunks to send, then drop


def pieces(text: str) -> list[str]:
    """Split a reply into word-sized deltas, the way a model streams tokens."""
    return _PIECE.findall(text) or [""]


def rough_tokens(text: str) -> int:
    """Cheap token estimate for the fake usage numbers (words and punctuation)."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def echo_passages(body: dict[str, Any]) -> str:
    """Reply builder that cites every numbered passage found in the prompt."""
    prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
    numbers = _PASSAGE_HEADER.findall(prompt)
    if not numbers:
        return "I_CANNOT_HELP"
    return "According to the course material " + " ".join(f"[{n}]" for n in numbers) + "."


def hashed_embedding(text: str, dim: int) -> list[float]:
    """Deterministic unit vector: hashed bag of words, so texts sharing words are close."""
    vec = [0.0] * dim
    for word in _WORD.findall(text.lower()) or [""]:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dim
        vec[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0:
        vec[0], norm = 1.0, 1.0
    return [v / norm for v in vec]


class FakeLLM:
    """OpenAI-compatible server on 127.0.0.1 with a random free port."""

    def __init__(
        self,
        reply: Reply = "Hello from the fake model.",
        *,
        model: str = "fake-model",
        embedding_dim: int = 16,
        token_delay: float = 0.0,
        send_usage: bool = True,
    ) -> None:
        self.reply = reply
        self.model = model
        self.embedding_dim = embedding_dim
        self.token_delay = token_delay
        self.send_usage = send_usage
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self._queued: deque[str] = deque()
        self._faults = _Faults()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0

    # ---- control -------------------------------------------------------------------
    def queue_replies(self, *texts: str) -> None:
        """Use these replies for the next chat requests, in order, before `reply`."""
        self._queued.extend(texts)

    def fail_next(self, n: int, status: int = 500) -> None:
        """The next `n` requests get an HTTP error `status` (before any body)."""
        self._faults.fail.extend([status] * n)

    def rate_limit_next(self, n: int, retry_after: float = 0.05) -> None:
        """The next `n` requests get 429 with a `retry-after` header (seconds)."""
        self._faults.rate_limit.extend([retry_after] * n)

    def hang_next(self, n: int) -> None:
        """The next `n` requests are never answered (until the server stops)."""
        self._faults.hang += n

    def clear_faults(self) -> None:
        """Drop the faults armed and not yet met. A request the client gave up on before it
        arrived (its timeout ran out while connecting, on a loaded machine) never took its
        fault, which would otherwise meet the next request."""
        self._faults = _Faults()

    def break_stream_after(self, chunks: int, times: int = 1) -> None:
        """The next `times` streaming requests send `chunks` content deltas, then drop the connection."""
        self._faults.break_after.extend([chunks] * times)

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """Bodies of every chat completion request received, failed ones included."""
        return [r.json or {} for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        self._stopping.set()  # releases hung handlers so shutdown is quick
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeLLM:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- handlers ------------------------------------------------------------------
    async def _record(self, request: web.Request) -> dict[str, Any] | None:
        body = orjson.loads(await request.read()) if request.can_read_body else None
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.headers), body)
        )
        return body

    async def _injected_fault(self) -> web.StreamResponse | None:
        faults = self._faults
        if faults.hang:
            faults.hang -= 1
            await self._stopping.wait()
            return _error(503, "server stopping")
        if faults.rate_limit:
            retry_after = faults.rate_limit.popleft()
            return _error(429, "rate limited", {"retry-after": f"{retry_after:g}"})
        if faults.fail:
            return _error(faults.fail.popleft(), "injected failure")
        return None

    def _reply_for(self, body: dict[str, Any]) -> str:
        if self._queued:
            return self._queued.popleft()
        return self.reply(body) if callable(self.reply) else self.reply

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        data = [{"id": self.model, "object": "model", "created": 0, "owned_by": "fakellm"}]
        return _json({"object": "list", "data": data})

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request) or {}
        fault = await self._injected_fault()
        if fault is not None:
            return fault
        inputs = body.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        dim = int(body.get("dimensions") or self.embedding_dim)
        vectors = [hashed_embedding(str(t), dim) for t in inputs]
        if body.get("encoding_format") == "base64":  # float32 little-endian, as OpenAI sends
            encoded: list[Any] = [
                base64.b64encode(struct.pack(f"<{dim}f", *v)).decode() for v in vectors
            ]
        else:
            encoded = vectors
        data = [
            {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)
        ]
        used = sum(rough_tokens(str(t)) for t in inputs)
        usage = {"prompt_tokens": used, "total_tokens": used}
        return _json({"object": "list", "data": data, "model": body.get("model"), "usage": usage})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request) or {}
        fault = await self._injected_fault()
        if fault is not None:
            return fault
        text = self._reply_for(body)
        parts = pieces(text)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if limit is not None and len(parts) > int(limit):
            parts, finish = parts[: int(limit)], "length"
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        usage = {
            "prompt_tokens": rough_tokens(prompt),
            "completion_tokens": rough_tokens("".join(parts)),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            return await self._stream(request, body, parts, finish, usage)
        return _json(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(parts)},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage if self.send_usage else None,
            }
        )

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        parts: list[str],
        finish: str,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        break_after = self._faults.break_after.popleft() if self._faults.break_after else None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": None,
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            extra = {"usage": None} if include_usage else {}
            return {**base, "choices": [choice], **extra}

        try:
            await _send(response, chunk({"role": "assistant", "content": ""}, None))
            for i, part in enumerate(parts):
                if break_after is not None and i >= break_after:
                    request.transport.close()  # abrupt: no terminating chunk, no [DONE]
                    return response
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                await _send(response, chunk({"content": part}, None))
            await _send(response, chunk({}, finish))
            if include_usage and self.send_usage:
                await _send(response, {**base, "choices": [], "usage": usage})
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:  # the client closed the stream early
            self.disconnects += 1
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        return response


async def _send(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(b"data: " + orjson.dumps(payload) + b"\n\n")


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    kind = "rate_limit_error" if status == 429 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    response = _json(body, status)
    response.headers.update(headers or {})
    return response
