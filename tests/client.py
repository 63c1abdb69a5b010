"""Test-side clients: HTTP through aiohttp, sockets through python-socketio's real client."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import aiohttp
import socketio
from aiohttp import web


@dataclass
class Instance:
    url: str
    app: web.Application
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.runner.cleanup()


@dataclass
class User:
    id: str
    name: str
    role: str
    token: str
    email: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Socket:
    """A python-socketio AsyncClient that records every server event it receives."""

    def __init__(self, url: str, token: str | None, transports: list[str] | None = None) -> None:
        self.url = url
        self.token = token
        self.transports = transports or ["websocket"]
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: dict[str, list[Any]] = defaultdict(list)
        self._waiters: list[tuple[str, Any, asyncio.Future[Any]]] = []
        self.client.on("*", self._on_any)

    async def _on_any(self, event: str, data: Any = None) -> None:
        self.events[event].append(data)
        for waiter in list(self._waiters):
            name, predicate, fut = waiter
            if name == event and not fut.done() and (predicate is None or predicate(data)):
                fut.set_result(data)
                self._waiters.remove(waiter)

    async def connect(self) -> Socket:
        await self.client.connect(self.url, auth={"token": self.token} if self.token else None,
                                  transports=self.transports, wait_timeout=5)
        return self

    async def call(self, event: str, data: Any = None, timeout: float = 10) -> dict[str, Any]:
        return await self.client.call(event, data if data is not None else {}, timeout=timeout)

    async def ok(self, event: str, data: Any = None, timeout: float = 10) -> dict[str, Any]:
        """Call and assert the ack is ok."""
        ack = await self.call(event, data, timeout)
        assert ack.get("ok") is True, f"{event} failed: {ack}"
        return ack

    async def wait_for(self, event: str, predicate: Any = None, timeout: float = 5) -> Any:
        for data in self.events.get(event, []):
            if predicate is None or predicate(data):
                return data
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append((event, predicate, fut))
        return await asyncio.wait_for(fut, timeout)

    async def expect_none(self, event: str, predicate: Any = None, within: float = 0.5) -> None:
        await asyncio.sleep(within)
        matching = [d for d in self.events.get(event, []) if predicate is None or predicate(d)]
        assert not matching, f"unexpected {event}: {matching}"

    def received(self, event: str) -> list[Any]:
        return list(self.events.get(event, []))

    async def disconnect(self) -> None:
        if self.client.connected:
            await self.client.disconnect()


class Api:
    """HTTP helpers plus socket bookkeeping so tests close what they open."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.sockets: list[Socket] = []

    async def request(self, method: str, path: str, user: User | None = None, **kwargs: Any) -> tuple[int, Any]:
        headers = kwargs.pop("headers", {})
        if user:
            headers.update(user.headers)
        async with self.session.request(method, self.url + path, headers=headers, **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            return resp.status, body

    async def register(self, name: str = "Student", email: str | None = None, password: str = "correct horse 1") -> User:
        email = email or f"{name.lower().replace(' ', '')}-{uuid.uuid4().hex[:8]}@example.com"
        status, body = await self.request("POST", "/api/auth/register", json={"email": email, "password": password, "name": name})
        assert status == 201, body
        u = body["user"]
        return User(u["id"], u["name"], u["role"], body["token"], email)

    async def guest(self, name: str | None = None) -> User:
        status, body = await self.request("POST", "/api/auth/guest", json={"name": name} if name else {})
        assert status == 201, body
        u = body["user"]
        return User(u["id"], u["name"], u["role"], body["token"])

    async def staff(self, db: Any, role: str, name: str | None = None) -> User:
        """A user with a staff role, made as an operator would: register, then an admin role change."""
        from storage import users

        user = await self.register(name or role.title())
        async with db.transaction() as conn:
            await users.set_role(conn, uuid.UUID(user.id), role)
        user.role = role
        return user

    async def socket(self, user: User | str | None, url: str | None = None, transports: list[str] | None = None) -> Socket:
        token = user.token if isinstance(user, User) else user
        sock = Socket(url or self.url, token, transports)
        await sock.connect()
        self.sockets.append(sock)
        return sock

    async def live_session(self, mentor: User, title: str = "Live", max_participants: int = 20) -> dict[str, Any]:
        """A live session the mentor created and started (`live_session` of the answer)."""
        status, body = await self.request("POST", "/api/live-sessions", mentor,
                                          json={"title": title, "max_participants": max_participants})
        assert status == 201, body
        live = body["live_session"]
        status, body = await self.request("POST", f"/api/live-sessions/{live['id']}/start", mentor)
        assert status == 200, body
        return live

    async def close_sockets(self) -> None:
        for sock in self.sockets:
            try:
                await sock.disconnect()
            except Exception:
                pass
