"""`caravan serve`, as the README's first command runs it: the whole cluster up, served, and gone on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import ollama
import pytest

from caravan.cluster import REDIS_HINT, ClusterConfig, LocalCluster, free_port
from caravan.errors import CaravanError
from tests.integration.helpers import wait_for


def children(pid: int) -> set[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_serve_runs_everything_and_ctrl_c_leaves_no_orphans(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "CARAVAN_MODELS": str(tmp_path / "models"), "OLLAMA_HOST": f"127.0.0.1:{port}",
           "CARAVAN_REGISTRY_PORT": str(free_port()), "CARAVAN_N_THREADS": "1"}
    env.pop("CARAVAN_REDIS_URL", None)  # no URL: serve starts its own redis-server
    proc = subprocess.Popen([sys.executable, "-m", "caravan.cli.main", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        banner = wait_for(lambda: (line := proc.stdout.readline()) and "Caravan is running" in line and line,
                          timeout=120, what="the serve banner")
        assert f"127.0.0.1:{port}" in banner
        client = ollama.Client(host=f"http://127.0.0.1:{port}")
        assert any(m.model == "smollm2:135m" for m in client.list().models)
        reply = client.chat(model="smollm2:135m", messages=[{"role": "user", "content": "Hi"}],
                            options={"num_predict": 3, "temperature": 0})
        assert reply.done and reply.message.content
        kids = children(proc.pid)
        assert len(kids) == 4, "redis-server, registry, worker and gateway"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert not [pid for pid in kids if alive(pid)], "every child process stopped"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_missing_redis_server_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    cluster = LocalCluster(ClusterConfig(models=tmp_path, log_dir=tmp_path))
    with pytest.raises(CaravanError) as info:
        cluster.start_redis()
    assert info.value.message == REDIS_HINT and "apt-get install redis-server" in REDIS_HINT
