"""Before/after figures for the gateway hardening (not collected by the suite: run it by path).

    .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/measure_gateway.py
    MEASURE_STOCK=1 .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/measure_gateway.py

The second runs python-socketio's stock server with no per-user limits, as before the
hardening. Prints: acks and log bytes for 1,000 undecodable frames; events/s accepted
from 20 sockets of one user; acks for a burst of 50 events from a long-polling JS client.
"""

import asyncio
import io
import logging
import os
import time

import aiohttp
import pytest
import socketio

import server.realtime as realtime
from tests.client import Api
from tests.test_hardening_gateway import RawSocket, direct_conversation, run_polling_burst

STOCK = os.environ.get("MEASURE_STOCK") == "1"

@pytest.fixture(autouse=True)
def maybe_stock(monkeypatch):
    if STOCK:
        def stock(max_poll_packets=16, **kw):
            return socketio.AsyncServer(**kw)
        monkeypatch.setattr(realtime, "GuardedServer", stock)

async def test_measure(start_instance):
    unlimited = {"gateway__user_rate_limit_per_second": 1e9, "gateway__user_rate_limit_burst": 10**9, "gateway__max_sockets_per_user": 0}
    inst = await start_instance(**(unlimited if STOCK else {}))
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(h)
    async with aiohttp.ClientSession() as session:
        api = Api(session, inst.url)
        alice, bob = await api.register("Alice"), await api.register("Bob")
        cid = await direct_conversation(api, alice, bob)
        raw = await RawSocket.connect(session, inst.url, alice.token)
        for i in range(1, 1001):
            await raw.send(f'2{i}["message:send",{{"content":"\\ud83d"}}]')
        await asyncio.sleep(3)
        print(f"\nMEASURE undecodable: acks {len(raw.acks)}/1000, log bytes {len(buf.getvalue())}")
        await raw.close()
        socks = [await api.socket(alice) for _ in range(20)]
        typing = {"conversation_id": cid, "typing": True}
        ok = 0
        start = time.monotonic()
        async def pump(s):
            nonlocal ok
            while time.monotonic() - start < 3:
                acks = await asyncio.gather(*[s.call("typing", typing) for _ in range(5)])
                ok += sum(1 for a in acks if a["ok"])
        await asyncio.gather(*[pump(s) for s in socks])
        print(f"MEASURE 20 sockets of one user: {ok / (time.monotonic() - start):.0f} accepted events/s")
        await api.close_sockets()
        acks = await run_polling_burst(inst.url, alice.token, "typing", 50, cid)
        print(f"MEASURE polling burst of 50: {sum(1 for a in acks if a.get('ok'))} acked ok")
    root.removeHandler(h)
