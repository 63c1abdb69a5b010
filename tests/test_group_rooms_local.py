"""Group rooms on one instance without Redis (handlers/grouprooms.py): what a group's
members see does not depend on Redis. The cross-instance cases are in test_group_rooms.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from handlers import grouprooms, threads
from handlers.events import group_room
from server.grouprooms import GroupRoomCheck
from server.keys import CORE, GATEWAY, SIO
from tests.client import Api, Instance
from tests.redis_helpers import in_room


async def test_a_groups_events_follow_its_room_on_one_instance(api: Api, server: Instance) -> None:
    """Members' sockets are in the group's room from its creation (and from connect, for a
    tab opened later); typing reaches the other members and none of the typist's tabs; a
    removed member leaves the room and hears nothing more; the periodic check puts back a
    member's socket that lost the room and takes out one that should not be there."""
    a, b, d = [await api.register(n) for n in ("Ana", "Bob", "Dee")]
    sa, sb, sd = await api.socket(a), await api.socket(b), await api.socket(d)
    cid = (await sa.ok("conversation:create", {"kind": "group", "member_ids": [b.id, d.id]}))["conversation"]["id"]
    room = group_room(cid)
    assert all(in_room(server, s, room) for s in (sa, sb, sd))
    sa2 = await api.socket(a)  # a second tab, opened after the group exists
    assert in_room(server, sa2, room)

    await sa.ok("typing", {"conversation_id": cid, "typing": True})
    await sb.wait_for("typing")
    await sd.wait_for("typing")
    await sa2.expect_none("typing", within=0.2)
    assert sa.received("typing") == []

    assert await threads.remove_member(server.app[CORE], uuid.UUID(cid), uuid.UUID(d.id)) is True
    assert not in_room(server, sd, room)
    await sa.ok("message:send", {"conversation_id": cid, "content": "without dee", "client_id": "1"})
    for sock in (sa, sa2, sb):
        await sock.wait_for("message:new", lambda m: m["message"]["content"] == "without dee")
    await sd.expect_none("message:new", within=0.2)
    assert await threads.remove_member(server.app[CORE], uuid.UUID(cid), uuid.UUID(d.id)) is False

    sio = server.app[SIO]
    await sio.leave_room(sb.client.get_sid("/"), room)  # as after a lost enter notice
    await sio.enter_room(sd.client.get_sid("/"), room)  # as after a lost leave notice
    check = GroupRoomCheck(server.app[CORE], server.app[GATEWAY], sio)
    assert await check.check_once() == 2
    assert in_room(server, sb, room) and not in_room(server, sd, room)


async def test_on_one_instance_a_new_groups_events_go_to_its_room_alone(api: Api, server: Instance) -> None:
    """Without Redis nothing is on its way to another instance: a group's events go to its
    room alone from its first second (with Redis, members' own rooms are added while the
    group settles: test_group_rooms.py), so a busy new group is not fanned out twice."""
    a, b = [await api.register(n) for n in ("Ana", "Bob")]
    sa, sb = await api.socket(a), await api.socket(b)
    conv = (await sa.ok("conversation:create", {"kind": "group", "member_ids": [b.id]}))["conversation"]
    core = server.app[CORE]
    assert core.settings.cluster.redis_url is None
    assert core.settings.threads.group_room_settle_seconds > 0  # the default window is on
    rooms = grouprooms.audience(core, kind="group", conversation_id=uuid.UUID(conv["id"]),
                                created_at=datetime.now(UTC), member_ids=[uuid.UUID(a.id), uuid.UUID(b.id)])
    assert rooms == [group_room(conv["id"])]
    await sa.ok("message:send", {"conversation_id": conv["id"], "content": "first", "client_id": "1"})
    got = await sb.wait_for("message:new", lambda m: m["message"]["content"] == "first")
    assert got["message"]["seq"] == 1
