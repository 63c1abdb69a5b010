"""`studyhall serve` with server/fanout.py's broadcast path swapped in, for the benchmark.

    python bench/rooms_server.py      (same environment variables as `studyhall serve`)

Until server/realtime.py builds its Socket.IO server with `fanout.create_manager()`, this
launcher does it from outside: it wraps `create_sio` so the app gets the FastFanout
manager, then runs the normal CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import socketio  # noqa: E402

import server.app  # noqa: E402
from server import fanout  # noqa: E402
from server.cli import main  # noqa: E402
from server.config import Settings  # noqa: E402

_stock_create_sio = server.app.create_sio


def create_sio(settings: Settings) -> socketio.AsyncServer:
    sio = _stock_create_sio(settings)
    if not isinstance(sio.manager, fanout.FastFanout):
        sio.manager = fanout.create_manager(settings)
        sio.manager.set_server(sio)
    fanout.install(sio)
    return sio


if __name__ == "__main__":
    server.app.create_sio = create_sio
    sys.argv = [sys.argv[0], "serve"]
    raise SystemExit(main())
