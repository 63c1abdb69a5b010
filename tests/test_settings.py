"""Settings: sections composed by one reader of the environment, and the override helper
the tests use (`Settings.with_`)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from handlers.rooms.settings import RoomSettings
from handlers.settings import Settings
from handlers.tutor.settings import TutorSettings

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("http", "gateway", "database", "cluster", "log", "auth", "presence", "threads", "knowledge",
            "rooms", "tickets", "tutor", "identity", "platform", "webhooks", "retrieval")


def test_settings_is_made_of_frozen_sections() -> None:
    s = Settings()
    assert tuple(f.name for f in dataclasses.fields(s)) == SECTIONS
    for name in SECTIONS:
        section = getattr(s, name)
        assert dataclasses.is_dataclass(section) and type(section).__dataclass_params__.frozen, name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, dataclasses.fields(section)[0].name, None)


def test_each_variable_lands_in_its_section() -> None:
    s = Settings.from_env({
        "STUDYHALL_ROOM_LEAVE_GRACE": "0.5", "STUDYHALL_PRESENCE_GRACE": "2", "DATABASE_URL": "postgresql://x/y",
        "REDIS_URL": "redis://r", "STUDYHALL_PORT": "9000", "STUDYHALL_TICKET_AUTO_ASSIGN": "1",
        "STUDYHALL_LLM_MODEL": "m", "STUDYHALL_DOC_MAX_PAGES": "7", "STUDYHALL_LOCKOUT_MINUTES": "3",
    })
    assert s.rooms.leave_grace_seconds == 0.5 and s.rooms.host_grace_seconds == 120.0
    assert s.presence.grace_seconds == 2.0
    assert (s.database.url, s.cluster.redis_url, s.http.port) == ("postgresql://x/y", "redis://r", 9000)
    assert s.tickets.auto_assign is True
    assert s.tutor.llm_model == "m" and s.knowledge.max_pages == 7 and s.auth.lockout_minutes == 3
    assert Settings.from_env({}) == Settings()  # the defaults are the sections' own
    with pytest.raises(SystemExit, match="STUDYHALL_ROOM_LEAVE_GRACE"):
        Settings.from_env({"STUDYHALL_ROOM_LEAVE_GRACE": "soon"})


def test_with_changes_one_setting_of_a_section_or_a_whole_section() -> None:
    base = Settings()
    changed = base.with_(rooms__leave_grace_seconds=0.5, cluster__redis_url="redis://r", cluster__redis_channel="c")
    assert changed.rooms == RoomSettings(leave_grace_seconds=0.5)
    assert (changed.cluster.redis_url, changed.cluster.redis_channel) == ("redis://r", "c")
    assert changed.cluster.redis_timeout_seconds == base.cluster.redis_timeout_seconds
    assert changed.http == base.http and base.rooms == RoomSettings()  # the original is untouched
    whole = base.with_(tutor=TutorSettings(llm_model="m"), tutor__llm_api_key="k")
    assert (whole.tutor.llm_model, whole.tutor.llm_api_key) == ("m", "k")
    with pytest.raises(TypeError, match="section 'room'"):
        base.with_(room__leave_grace_seconds=1.0)
    with pytest.raises(TypeError):
        base.with_(rooms__leave_grace=1.0)


def test_section_modules_import_nothing_upward() -> None:
    """A feature's section is plain data: it imports no handler, server or storage code, so
    handlers/settings.py can compose it without cycles."""
    for path in sorted((ROOT / "handlers").glob("*/settings.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert modules <= {"__future__", "dataclasses"}, (path, modules)
