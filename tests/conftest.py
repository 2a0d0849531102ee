"""Shared fixtures: a real redis-server on a free port, and a whole cluster as real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from caravan.cluster import ClusterConfig, LocalCluster, free_port


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for the test session (the same embedded start ``caravan serve`` uses)."""
    embedded = LocalCluster(ClusterConfig(models=tmp_path_factory.mktemp("unused"),
                                          log_dir=tmp_path_factory.mktemp("redis-logs")))
    embedded.start_redis()
    yield embedded.redis_url
    embedded.stop()


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding the demo model."""
    from registry.demo import import_demo
    from registry.store import Store

    root = tmp_path_factory.mktemp("models")
    import_demo(Store(root))
    return root


@pytest.fixture(scope="session")
def cluster(demo_store: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """registry + one real llama.cpp worker + gateway, as processes, on the session's Redis."""
    logs = tmp_path_factory.mktemp("logs")
    running = LocalCluster(ClusterConfig(models=demo_store, gateway_port=free_port(), redis_url=redis_url,
                                         workers=1, log_dir=logs,
                                         worker_env={"CARAVAN_N_THREADS": "2"}))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def gateway(cluster: LocalCluster) -> str:
    return cluster.gateway_url
