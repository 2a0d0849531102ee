"""Observability on the real cluster (processes): every service's /metrics after a request, queue depth read
from Redis at scrape time, /api/status/cluster and ``caravan status``, one request id in the gateway's and the
worker's logs, and a real Prometheus scraping all of it (workers found through the gateway's http_sd)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from caravan import keys
from caravan.cluster import ClusterConfig, LocalCluster, free_port
from caravan.queue import InferenceJob, LoadSpec
from tests.integration.helpers import wait_for

MODEL = "smollm2:135m"
ROOT = Path(__file__).resolve().parents[2]
PROBE_MODEL = "queue-probe:latest"
KEY_SERIES = {  # series → the scrape job that must report it
    "caravan_requests_total": "gateway", "caravan_time_to_first_token_seconds_count": "gateway",
    "caravan_e2e_request_latency_seconds_count": "gateway", "caravan_request_queue_time_seconds_count": "gateway",
    "caravan_queue_depth": "gateway", "caravan_redis_up": "gateway", "caravan_tokens_predicted_total": "workers",
    "caravan_prompt_tokens_total": "workers", "caravan_inter_token_latency_seconds_count": "workers",
    "caravan_worker_memory_budget_bytes": "workers", "caravan_worker_busy_slots": "workers",
    "caravan_model_loads_total": "workers", "caravan_registry_store_bytes": "registry",
}


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(url, timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


@pytest.fixture(scope="module")
def served(gateway: str) -> httpx.Response:
    """One generate through the cluster, so every service has something to report."""
    body = {"model": MODEL, "prompt": "private prompt words", "stream": False,
            "options": {"temperature": 0, "num_predict": 6}}
    response = httpx.post(gateway + "/api/generate", json=body, timeout=180)
    assert response.status_code == 200, response.text
    return response


@pytest.fixture(scope="module")
def worker_url(served: httpx.Response, gateway: str) -> str:
    status = httpx.get(gateway + "/api/status/cluster").json()
    worker = next(w for w in status["workers"] if w["id"] == "worker-0")
    return str(worker["metrics_url"])


def test_gateway_metrics_count_the_request(served: httpx.Response, gateway: str) -> None:
    found = samples(gateway + "/metrics")
    assert (value(found, "caravan_requests_total", endpoint="/api/generate", model=MODEL, status="200") or 0) >= 1
    for histogram in ("caravan_time_to_first_token_seconds", "caravan_e2e_request_latency_seconds",
                      "caravan_request_queue_time_seconds"):
        assert (value(found, f"{histogram}_count", model=MODEL) or 0) >= 1, histogram
    assert value(found, "caravan_queue_depth", model=MODEL) is not None
    assert value(found, "caravan_redis_up") == 1
    assert (value(found, "caravan_cluster_workers", state="ready") or 0) >= 1
    assert served.headers["x-request-id"] not in httpx.get(gateway + "/metrics").text


def test_worker_metrics_report_tokens_loads_and_memory(served: httpx.Response, worker_url: str,
                                                       gateway: str) -> None:
    found = samples(worker_url)
    labels = {"worker": "worker-0", "model": MODEL}
    assert (value(found, "caravan_tokens_predicted_total", **labels) or 0) >= 1
    assert (value(found, "caravan_prompt_tokens_total", **labels) or 0) >= 1
    assert (value(found, "caravan_model_loads_total", **labels, result="ok") or 0) >= 1
    assert (value(found, "caravan_worker_slots", **labels) or 0) >= 1
    budget = httpx.get(gateway + "/api/status/cluster").json()["workers"][0]["memory_budget"]
    assert value(found, "caravan_worker_memory_budget_bytes", worker="worker-0") == budget


def test_registry_metrics_report_the_store(cluster: LocalCluster) -> None:
    found = samples(cluster.registry_url + "/metrics")
    assert (value(found, "caravan_registry_store_bytes") or 0) > 90_000_000
    assert (value(found, "caravan_registry_models") or 0) >= 1


@pytest.fixture
def probe_queue(cluster: LocalCluster) -> Iterator[None]:
    """Three requests waiting for a spec no worker serves: two in its shared stream, one in a per-user one."""
    streams = [keys.queue("queue-probe-spec"), keys.queue("queue-probe-spec"), keys.queue("queue-probe-spec") + ":u:al"]
    spec = LoadSpec(model=PROBE_MODEL, blob="sha256:" + "0" * 64)
    with redis.Redis.from_url(cluster.redis_url) as client:
        for n, stream in enumerate(streams):
            client.xadd(stream, InferenceJob(id=f"probe{n}", op="generate", model=PROBE_MODEL, spec=spec).encode())
        yield
        client.delete(*set(streams))


def test_queue_depth_status_and_cli_read_redis(probe_queue: None, gateway: str) -> None:
    assert value(samples(gateway + "/metrics"), "caravan_queue_depth", model=PROBE_MODEL) == 3
    status = httpx.get(gateway + "/api/status/cluster").json()
    row = next(m for m in status["models"] if m["model"] == PROBE_MODEL)
    assert (row["queued"], row["in_flight"], row["workers"]) == (3, 0, [])
    assert status["queued"] >= 3 and {w["id"] for w in status["workers"]} >= {"worker-0"}
    env = {**os.environ, "CARAVAN_HOST": gateway, "COLUMNS": "160"}
    caravan = str(Path(sys.executable).parent / "caravan")
    as_json = subprocess.run([caravan, "status", "--json"], env=env, capture_output=True, text=True, check=True)
    assert json.loads(as_json.stdout)["queued"] == status["queued"]
    table = subprocess.run([caravan, "status"], env=env, capture_output=True, text=True, check=True).stdout
    assert "worker-0" in table and PROBE_MODEL in table and "Workers" in table


def test_status_routes_keep_ollamas_stub_and_list_prometheus_targets(worker_url: str, gateway: str) -> None:
    assert httpx.get(gateway + "/api/status").json() == {"cloud": {"disabled": True, "source": "none"}}
    groups = httpx.get(gateway + "/api/status/prometheus-targets").json()
    worker = next(g for g in groups if g["labels"]["worker"] == "worker-0")
    assert worker_url == f"http://{worker['targets'][0]}{worker['labels']['__metrics_path__']}"


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_one_request_id_in_gateway_and_worker_logs(served: httpx.Response, cluster: LocalCluster) -> None:
    rid = served.headers["x-request-id"]

    def find(name: str, msg: str) -> dict[str, Any] | None:
        return next((e for e in log_lines(cluster.log_dir / f"{name}.log")
                     if e.get("request_id") == rid and e.get("msg") == msg), None)

    access = wait_for(lambda: find("gateway", "request"), what="the gateway's access line")
    assert (access["method"], access["path"], access["status"], access["model"]) == ("POST", "/api/generate", 200,
                                                                                    MODEL)
    assert access["duration"] > 0 and "private prompt words" not in json.dumps(access)
    served_line = wait_for(lambda: find("worker-0", "request served"), what="the worker's line")
    assert served_line["model"] == MODEL and served_line["eval_tokens"] >= 1


# -- a real Prometheus ---------------------------------------------------------------------------------------
def prometheus_binary() -> str:
    found = shutil.which("prometheus") or str(Path(sys.executable).parent / "prometheus")
    assert Path(found).exists(), ("the prometheus binary is missing: `scripts/install.sh dev` puts Debian's into "
                                  ".venv/bin (or `apt-get install prometheus`)")
    return found


def scrape_config(cluster: LocalCluster, gateway: str) -> dict[str, Any]:
    """deploy/prometheus.yml with its targets on loopback and a 1 s interval."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    targets = {"gateway": gateway.removeprefix("http://"), "registry": cluster.registry_url.removeprefix("http://")}
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        for sd in job.get("http_sd_configs", []):
            sd.update(url=f"{gateway}/api/status/prometheus-targets", refresh_interval="1s")
        if job["job_name"] != "prometheus":
            jobs.append(job)
    config["scrape_configs"] = jobs
    return config


@pytest.fixture
def prometheus(cluster: LocalCluster, gateway: str, served: httpx.Response, tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(cluster, gateway)))
    port = free_port()
    runner = LocalCluster(ClusterConfig(models=tmp_path, log_dir=tmp_path))
    runner.spawn("prometheus", [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={tmp_path}/tsdb",
                                f"--web.listen-address=127.0.0.1:{port}"], {})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        runner.stop()


def query(base: str, expr: str) -> list[dict[str, Any]] | None:
    """An instant query's result list; None while Prometheus is not answering yet (no connection, or its
    503 "Service Unavailable" while the TSDB starts)."""
    try:
        response = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
    except httpx.HTTPError:
        return None
    if response.status_code == 503:
        return None
    body = response.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_every_service(prometheus: str) -> None:
    def healthy_targets() -> list[dict[str, Any]] | None:
        found = query(prometheus, "up == 1")
        return found if found and len(found) >= 3 else None

    up = wait_for(healthy_targets, timeout=60, what="three healthy targets")
    assert {r["metric"]["job"] for r in up} == {"gateway", "registry", "workers"}
    assert any(r["metric"].get("worker") == "worker-0" for r in up), "http_sd labels reach the worker series"
    for series, job in KEY_SERIES.items():
        selector = f'{series}{{job="{job}"}}'
        wait_for(functools.partial(query, prometheus, selector), timeout=60, what=selector)
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "caravan.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$model", ".*").replace("$worker", ".*")
            assert query(prometheus, expr) is not None, panel["title"]
