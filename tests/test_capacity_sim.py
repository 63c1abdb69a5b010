"""bench/capacity_sim.py, the day of traffic replayed against the capacity model (docs/scaling.md):
its verdicts must follow from its own model, or the sizing table built from it means nothing."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from bench import capacity_sim as sim

ROOT = Path(__file__).resolve().parent.parent


def test_the_users_model_covers_every_hour_of_the_day() -> None:
    for curve in (sim.ONLINE, sim.IN_CLASS, sim.IN_OFFICE_HOURS, sim.TUTOR_PER_HOUR, sim.SUPPORT_PEAK):
        assert len(curve) == 24
    assert all(c + o <= 1 for c, o in zip(sim.IN_CLASS, sim.IN_OFFICE_HOURS, strict=True))
    assert abs(sum(share for _, share in sim.CLASS_SIZES) - 1) < 1e-9
    assert {size for size, _ in sim.CLASS_SIZES} <= set(range(30, 501))


def test_more_instances_lower_each_instances_load_but_not_what_it_receives() -> None:
    few = sim.replay(20000, sim.Fleet(instances=2))
    many = sim.replay(20000, sim.Fleet(instances=8))
    busy = [(a, b) for (_, a), (_, b) in zip(few, many, strict=True) if a.instance_cpu > 0.001]
    assert busy
    for a, b in busy:
        assert b.instance_cpu < a.instance_cpu
        assert b.instance_mem < a.instance_mem
    # On one channel (STUDYHALL_REDIS_CHANNELS=single) every instance receives every Redis
    # event: spreading sockets does not shrink it.
    few_single = sim.replay(20000, sim.Fleet(instances=2, fanout="broadcast"))
    many_single = sim.replay(20000, sim.Fleet(instances=8, fanout="broadcast"))
    for (_, a), (_, b) in zip(few_single, many_single, strict=True):
        if a.instance_cpu > 0.001:
            assert b.instance_receive >= a.instance_receive
    # With targeted fan-out (the default) an instance hears only events for its sockets.
    assert max(lo.instance_receive for _, lo in many) < max(lo.instance_receive for _, lo in many_single)


def test_a_group_event_is_one_publish_heard_only_by_instances_with_a_member() -> None:
    # handlers/grouprooms.py: a group's messages, typing and read markers go to the group's
    # room, one publish on its channel, whatever the group's size (no ROOM_EMIT_LIMIT).
    hour = next(i for i, share in enumerate(sim.IN_OFFICE_HOURS) if share)
    h = sim.traffic(100000, hour, burst=False)
    office_msgs = h.online * sim.IN_OFFICE_HOURS[hour] * sim.OFFICE_PER_MIN / 60
    group = [e for e in h.kinds if e.recipients == sim.OFFICE_GROUP]
    reads = [e for e in h.kinds if e.recipients == sim.OFFICE_GROUP - 1]
    assert group and reads and all(e.room for e in group + reads)
    assert abs(sum(e.rate for e in group) - office_msgs * (1 + sim.TYPING_PER_MESSAGE)) < 1e-6
    assert abs(sum(e.rate for e in reads) - office_msgs * (sim.OFFICE_GROUP - 1) * sim.READS_PER_MESSAGE) < 1e-6
    for members in (sim.OFFICE_GROUP, 40, 500):  # under and over the emit limit
        publishes, copies = sim.room_channel_copies(sim.Kind(1.0, members, room=True), 100)
        assert publishes == 1 and copies < min(members, 100)
    # A direct message still goes to each member's own room: one publish per member.
    assert sim.room_channel_copies(sim.Kind(1.0, 2), 100) == (2, 2)
    # Over the emit limit, an emit to users' own rooms goes once to every instance.
    assert sim.room_channel_copies(sim.Kind(1.0, sim.ROOM_EMIT_LIMIT + 1), 100) == (1.0, 100.0)


def test_an_undersized_fleet_breaks_at_the_peak_hour_and_says_so() -> None:
    fleet = sim.Fleet(instances=2)
    users = next(u for u in range(1000, 500000, 1000) if sim.breaks(sim.replay(u, fleet)))
    rows = sim.replay(users, fleet)
    peak_hour = max(rows, key=lambda r: r[1].worst()[1])[0].hour
    assert sim.ONLINE[peak_hour] == max(sim.ONLINE)
    assert sim.breaks(rows) == (peak_hour, rows[peak_hour][1].worst()[0])
    assert sim.breaks(sim.replay(users - 1000, fleet)) is None
    assert sim.breaks(sim.replay(users, sim.Fleet(instances=4))) is None

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        sim.main(["--users", str(users), "--instances", "2", "--pg-cores", "2"])
    text = out.getvalue()
    broken_rows = [line for line in text.splitlines() if "breaks**" in line]
    assert [line.split("|")[1].strip() for line in broken_rows] == [f"{peak_hour:02d}"]
    assert f"breaks at {peak_hour:02d}:00" in text


def test_sizing_keeps_every_part_under_target_or_names_the_limit() -> None:
    small = sim.size(10000)
    assert small.sized and small.fleet.instances >= sim.MIN_INSTANCES
    assert all(v <= sim.TARGET for _, lo in sim.replay(10000, small.fleet) for v in lo.parts().values())
    # A million users: broadcast fan-out cannot be sized; targeted fan-out can.
    broadcast = sim.size(1_000_000, "broadcast")
    assert not broadcast.sized and "every Redis event" in broadcast.nearest
    targeted = sim.size(1_000_000, "targeted")
    assert targeted.sized and targeted.fleet.redis_shards > 1


def test_every_constant_names_its_source_and_the_doc_lists_it() -> None:
    doc = (ROOT / "docs" / "scaling.md").read_text()
    for name, c in sim.C.items():
        assert c.value > 0 and c.unit
        sources = re.findall(r"(docs/[\w.]+\.md|bench/\w+\.py|GUIDE\.md|server/\w+\.py|ASSUMPTION)", c.source)
        assert sources, f"{name} names no source: {c.source}"
        for path in sources:
            if path.startswith(("docs/", "bench/", "server/")):
                assert (ROOT / path).exists(), f"{name}: {path} does not exist"
        assert f"`{name}`" in doc, f"docs/scaling.md does not list {name}"
