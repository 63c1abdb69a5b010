"""`REDIS_URL=redis+cluster://...` is read as operators write it (server/rediscluster.py),
and a malformed one stops the start instead of looking like a Redis outage forever."""

from __future__ import annotations

import pytest

from handlers.settings import Settings
from server.fanout import create_manager
from server.rediscluster import cluster_parts


def test_cluster_urls_name_every_node_with_credentials_and_tls() -> None:
    assert cluster_parts("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/0") == (
        [("10.0.0.1", 7000), ("10.0.0.2", 7001)], {})
    assert cluster_parts("redis+cluster://redis-0") == ([("redis-0", 6379)], {})
    nodes, options = cluster_parts("rediss+cluster://app:p%40ss@r1:6380,r2:6380")
    assert nodes == [("r1", 6380), ("r2", 6380)]
    assert options == {"username": "app", "password": "p@ss", "ssl": True}
    assert cluster_parts("redis+cluster://:secret@[::1]:7000")[1] == {"password": "secret"}
    assert cluster_parts("redis+cluster://:secret@[::1]:7000")[0] == [("::1", 7000)]


@pytest.mark.parametrize("url", ["redis+cluster://", "redis+cluster://host:notaport", "redis://one:6379/0"])
def test_a_malformed_cluster_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        cluster_parts(url)


def test_a_malformed_cluster_url_stops_the_start() -> None:
    settings = Settings().with_(cluster__redis_url="redis+cluster://")
    assert settings.cluster.redis_cluster
    with pytest.raises(ValueError):
        create_manager(settings.cluster)
    assert not Settings().with_(cluster__redis_url="redis://one:6379/0").cluster.redis_cluster
