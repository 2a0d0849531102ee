"""Model management end to end through the gateway: create, blobs, copy, delete, show (real processes).

The session's cluster is shared: every model made here has a unique name and is deleted again; the demo model
is never deleted. (Deleting during a pinned create is covered in-process: tests/unit/registry/test_gc.py.)
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import httpx
import numpy as np
import ollama
import pytest

from caravan.cluster import LocalCluster
from caravan.names import ModelName
from caravan.registry_auth import internal_headers
from registry.demo import demo_gguf
from registry.store import Store
from tests.integration.helpers import wait_for

MODEL = "smollm2:135m"
SYSTEM = "You are a pirate captain. Answer every question in one short sentence, in pirate speak."
GREEDY = {"temperature": 0, "num_predict": 4, "seed": 1}
MISSING = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def client(gateway: str) -> ollama.Client:
    return ollama.Client(host=gateway)


@pytest.fixture
def made(gateway: str) -> Iterator[list[str]]:
    """Names created by a test; deleted afterwards (ignoring ones the test already deleted)."""
    names: list[str] = []
    yield names
    for name in names:
        httpx.request("DELETE", f"{gateway}/api/delete", json={"model": name})


def fresh(made: list[str]) -> str:
    name = f"caravan-test-{uuid.uuid4().hex[:10]}:latest"
    made.append(name)
    return name


def layer_digest(store: Path, name: str, kind: str) -> str:
    manifest = Store(store).read_manifest(ModelName.parse(name)).manifest
    layer = manifest.layer(kind)
    assert layer is not None
    return layer.digest


def has_blob(gateway: str, digest: str) -> bool:
    return httpx.head(f"{gateway}/api/blobs/{digest}").status_code == 200


def show(gateway: str, name: str) -> dict[str, Any]:
    """Raw /api/show (the official client's ShowResponse has no ``system`` field)."""
    response = httpx.post(f"{gateway}/api/show", json={"model": name})
    assert response.status_code == 200, response.text
    return dict(response.json())


def create_lines(gateway: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = httpx.post(f"{gateway}/api/create", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def test_create_from_demo_with_system_and_parameters(client: ollama.Client, gateway: str, made: list[str]) -> None:
    name = fresh(made)
    progress = [p.status for p in client.create(model=name, from_=MODEL, system=SYSTEM, parameters=GREEDY,
                                                  stream=True)]
    assert progress[0] is not None and progress[0].startswith("using existing layer sha256:")
    assert progress[-2:] == ["writing manifest", "success"]
    shown = show(gateway, name)
    assert shown["system"] == SYSTEM and shown["details"]["parent_model"] == MODEL
    assert "num_predict                    4" in shown["parameters"]
    prompt = "What is the capital of France?"
    derived = client.generate(model=name, prompt=prompt)
    explicit = client.generate(model=MODEL, prompt=prompt, system=SYSTEM, options=GREEDY)
    plain = client.generate(model=MODEL, prompt=prompt, options=GREEDY)
    assert derived.prompt_eval_count == explicit.prompt_eval_count != plain.prompt_eval_count
    assert derived.eval_count is not None and derived.eval_count <= 4  # the PARAMETER reached the job
    reply = client.chat(model=name, messages=[{"role": "user", "content": "Who are you?"}])
    assert reply.done and reply.eval_count is not None and reply.eval_count <= 4


def test_create_from_uploaded_demo_gguf(client: ollama.Client, gateway: str, made: list[str]) -> None:
    name = fresh(made)
    digest = client.create_blob(demo_gguf())
    assert client.create(model=name, files={"smollm2.gguf": digest}).status == "success"
    listed = next(m for m in client.list().models if m.model == name)
    assert listed.details is not None and listed.details.quantization_level == "Q4_1"
    assert client.delete(name).status == "success"
    assert has_blob(gateway, digest)  # the demo model still references it
    assert any(m.model == MODEL for m in client.list().models)


def tiny_gguf(path: Path) -> bytes:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_tensor("token_embd.weight", np.full((4, 4), 0.5, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def test_streamed_upload_then_deleting_the_last_reference_removes_blobs(
    gateway: str, made: list[str], tmp_path: Path, demo_store: Path
) -> None:
    data = tiny_gguf(tmp_path / "tiny.gguf")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    chunks = (data[i : i + 1024] for i in range(0, len(data), 1024))  # chunked request body
    assert httpx.post(f"{gateway}/api/blobs/{digest}", content=chunks).status_code == 201
    name = fresh(made)
    assert create_lines(gateway, {"model": name, "files": {"tiny.gguf": digest}})[-1] == {"status": "success"}
    assert layer_digest(demo_store, name, "model") == digest and has_blob(gateway, digest)
    assert httpx.request("DELETE", f"{gateway}/api/delete", json={"model": name}).status_code == 200
    assert not has_blob(gateway, digest)
    assert not (demo_store / "blobs" / digest.replace(":", "-")).exists()


def test_legacy_modelfile_form(gateway: str, made: list[str]) -> None:
    name = fresh(made)
    modelfile = f'FROM {MODEL}\nSYSTEM """Speak like a pirate."""\nPARAMETER num_ctx 512\n'
    statuses = [line["status"] for line in create_lines(gateway, {"name": name, "modelfile": modelfile})]
    assert statuses[-1] == "success" and "writing manifest" in statuses
    shown = show(gateway, name)
    assert shown["system"] == "Speak like a pirate." and "num_ctx                        512" in shown["parameters"]


def test_copy_then_delete_copy_keeps_blobs_delete_last_removes(
    client: ollama.Client, gateway: str, made: list[str], demo_store: Path
) -> None:
    original, copy = fresh(made), fresh(made)
    client.create(model=original, from_=MODEL, system=f"unique {uuid.uuid4().hex}")
    system = layer_digest(demo_store, original, "system")
    assert client.copy(original, copy).status == "success"
    assert show(gateway, copy)["system"] == show(gateway, original)["system"]
    assert client.delete(copy).status == "success"
    assert has_blob(gateway, system) and show(gateway, original)["system"].startswith("unique")
    assert client.delete(original).status == "success"
    assert not has_blob(gateway, system)
    assert has_blob(gateway, layer_digest(demo_store, MODEL, "model"))


ERRORS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("POST", "/api/create", {"model": "x"}, 400, "neither 'from' or 'files' was specified"),
    ("POST", "/api/create", {"model": "../x", "from": MODEL}, 400, "invalid model name"),
    ("POST", "/api/create", {"model": "a/../../b", "from": MODEL}, 400, "invalid model name"),
    ("POST", "/api/create", {"model": "x", "files": {"/etc/passwd": MISSING}}, 400, "file path must be relative"),
    ("POST", "/api/create", {"model": "x", "files": {"m.gguf": ""}}, 400, "invalid digest format"),
    ("POST", "/api/create", {"model": "x", "from": MODEL, "template": "{{ if }}"}, 400,
     "template error: template: :1: missing value for if"),
    ("POST", "/api/create", {"model": "x", "modelfile": ""}, 400, "path or Modelfile are required"),
    ("POST", "/api/create", {"model": "x", "from": "no-such-model", "stream": False}, 404,
     "model 'no-such-model:latest' not found"),
    ("POST", "/api/copy", {"source": "../x", "destination": "y"}, 400, 'source "../x" is invalid'),
    ("POST", "/api/copy", {"source": MODEL, "destination": "/abs"}, 400, 'destination "/abs" is invalid'),
    ("POST", "/api/copy", {"source": "no-such-model", "destination": "y"}, 404, 'model "no-such-model" not found'),
    ("DELETE", "/api/delete", {"model": "no-such-model"}, 404, "model 'no-such-model' not found"),
    ("DELETE", "/api/delete", {"model": "a/../../b"}, 400, 'name "a/../../b" is invalid'),
    ("POST", "/api/blobs/sha256:abc", {}, 400, "invalid digest format"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "error"), ERRORS)
def test_error_strings(gateway: str, method: str, path: str, body: dict[str, Any], status: int, error: str) -> None:
    response = httpx.request(method, gateway + path, json=body)
    assert (response.status_code, response.json()) == (status, {"error": error})


def test_missing_base_model_is_an_error_line(gateway: str) -> None:
    assert create_lines(gateway, {"model": "x", "from": "no-such-model"}) == [
        {"error": "model 'no-such-model:latest' not found"}
    ]


def test_digest_mismatch_leaves_no_file(gateway: str, demo_store: Path) -> None:
    claimed = "sha256:" + hashlib.sha256(b"claimed").hexdigest()
    actual = "sha256:" + hashlib.sha256(b"sent").hexdigest()
    response = httpx.post(f"{gateway}/api/blobs/{claimed}", content=b"sent")
    assert (response.status_code, response.json()) == (
        400, {"error": f'digest mismatch, expected "{claimed}", got "{actual}"'}
    )
    blobs = demo_store / "blobs"
    assert not any((blobs / d.replace(":", "-")).exists() for d in (claimed, actual))
    assert not list(blobs.glob(".tmp-*"))


def test_a_change_made_behind_the_gateway_reaches_its_model_cache(
    client: ollama.Client, gateway: str, cluster: LocalCluster, made: list[str]
) -> None:
    """The gateway caches resolved models for minutes; the registry announces every change (caravan:models),
    so a model deleted at the registry directly (as through another gateway) is gone at once here too."""
    name = fresh(made)
    client.create(model=name, from_=MODEL, system="cached")
    body = {"model": name, "prompt": "Hi", "stream": False, "options": GREEDY}
    assert httpx.post(f"{gateway}/api/generate", json=body, timeout=120).status_code == 200  # now cached
    deleted = httpx.request("DELETE", f"{cluster.registry_url}/api/delete", json={"model": name},
                            headers=internal_headers(cluster.internal_token))
    assert deleted.status_code == 200, deleted.text
    gone = wait_for(lambda: (r := httpx.post(f"{gateway}/api/generate", json=body, timeout=120)).status_code == 404
                    and r, timeout=10, what="the gateway to forget the deleted model")
    assert gone.json() == {"error": f"model '{name}' not found"}
