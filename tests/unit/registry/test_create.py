"""In-process tests of /api/create, /api/blobs, /api/copy, /api/delete and /api/show on the registry app."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from fastapi.testclient import TestClient

from caravan.names import ModelName
from caravan.settings import RegistrySettings
from registry.app import create_app
from registry.importer import import_gguf
from registry.store import Store

CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
MISSING = "sha256:" + "0" * 64


def write_tiny_gguf(path: Path, arch: str = "llama") -> Path:
    """A small but valid GGUF: a chat template, a context length, two tensors."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(256)
    writer.add_chat_template(CHATML)
    writer.add_file_type(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float16))
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


@pytest.fixture
def store(tmp_path: Path, gguf_file: Path) -> Store:
    store = Store(tmp_path / "models")
    import_gguf(store, ModelName.parse("base"), gguf_file)
    return store


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    with TestClient(create_app(RegistrySettings(CARAVAN_MODELS=str(store.root)))) as test_client:
        yield test_client


def lines(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post("/api/create", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def manifest_of(store: Store, name: str) -> dict[str, Any]:
    return dict(json.loads(store.read_manifest(ModelName.parse(name)).raw))


def blob_names(store: Store) -> set[str]:
    return {path.name for path in store.blobs.iterdir()}


# ------------------------------------------------------------------------------------------- create


def test_create_from_model_assembles_layers_as_ollama(client: TestClient, store: Store) -> None:
    base = manifest_of(store, "base")
    statuses = [item["status"] for item in lines(client, {
        "model": "mario", "from": "base", "system": "You are Mario.", "template": "{{ .System }} {{ .Prompt }}",
        "license": "MIT", "parameters": {"temperature": 0.7},
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "It's-a me!"}],
    })]
    model_digest = base["layers"][0]["digest"]
    assert statuses[0] == f"using existing layer {model_digest}"
    assert statuses[-2:] == ["writing manifest", "success"]
    assert sum(s.startswith("creating new layer") for s in statuses) == 5  # template system license params messages
    manifest = manifest_of(store, "mario")
    kinds = [layer["mediaType"].rsplit(".", 1)[1] for layer in manifest["layers"]]
    assert kinds == ["model", "template", "system", "license", "params", "messages"]
    assert manifest["layers"][0]["from"] == "base:latest"
    params = json.loads(store.read_blob(manifest["layers"][4]["digest"]))
    assert params == {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.7}  # merged over the base's
    config = json.loads(store.read_blob(manifest["config"]["digest"]))
    assert config["model_family"] == "llama" and config["file_type"] == "F16" and config["os"] == "linux"


def test_show_reports_created_model(client: TestClient) -> None:
    lines(client, {"model": "mario", "from": "base", "system": "You are Mario.", "license": ["A", "B"],
                   "parameters": {"temperature": 0.5}, "messages": [{"role": "user", "content": "hi"}]})
    shown = client.post("/api/show", json={"model": "mario"}).json()
    assert shown["system"] == "You are Mario."
    assert shown["license"] == "A\nB"
    assert shown["messages"] == [{"role": "user", "content": "hi"}]
    assert "temperature                    0.5" in shown["parameters"]
    assert "SYSTEM You are Mario." in shown["modelfile"] and "# FROM mario:latest" in shown["modelfile"]
    assert shown["details"]["parent_model"] == "base:latest"
    assert shown["model_info"]["llama.context_length"] == 256
    assert {"name": "output_norm.weight", "type": "F32", "shape": [4]} in shown["tensors"]
    assert shown["capabilities"] == ["completion"]
    assert client.post("/api/show", json={"model": "mario", "system": "Luigi"}).json()["system"] == "Luigi"


def test_stream_false_returns_last_object(client: TestClient) -> None:
    response = client.post("/api/create", json={"model": "m2", "from": "base", "stream": False})
    assert response.status_code == 200 and response.json() == {"status": "success"}


def test_create_from_uploaded_blob(client: TestClient, store: Store, gguf_file: Path) -> None:
    data = gguf_file.read_bytes() + b"\0" * 32  # another digest than the base's model blob
    digest = digest_of(data)
    assert client.head(f"/api/blobs/{digest}").status_code == 404
    assert client.post(f"/api/blobs/{digest}", content=data).status_code == 201
    assert client.post(f"/api/blobs/{digest}", content=data).status_code == 200
    assert client.head(f"/api/blobs/{digest}").status_code == 200
    statuses = [item["status"] for item in lines(client, {"model": "files", "files": {"tiny.gguf": digest}})]
    assert statuses[:2] == ["parsing GGUF", f"using existing layer {digest}"]
    assert statuses[-1] == "success"
    shown = client.post("/api/show", json={"model": "files"}).json()
    assert '"<|im_end|>"' in shown["parameters"]  # stop strings judged from the chat template
    assert shown["details"]["quantization_level"] == "F16"


@pytest.mark.parametrize("form", ["name", "digest", "path"])
def test_legacy_modelfile_form(client: TestClient, store: Store, gguf_file: Path, form: str) -> None:
    source = {"name": "base", "digest": "@" + manifest_of(store, "base")["layers"][0]["digest"],
              "path": str(gguf_file)}[form]
    modelfile = f'FROM {source}\nSYSTEM """Be brief."""\nPARAMETER temperature 0.25\nMESSAGE user hello\n'
    response = client.post("/api/create", json={"name": "legacy", "modelfile": modelfile, "stream": False})
    assert response.json() == {"status": "success"}
    shown = client.post("/api/show", json={"model": "legacy"}).json()
    assert shown["system"] == "Be brief." and "0.25" in shown["parameters"]
    assert shown["messages"] == [{"role": "user", "content": "hello"}]


def test_legacy_path_form_reads_modelfile_on_host(client: TestClient, tmp_path: Path, gguf_file: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM ./tiny.gguf\nSYSTEM from a file\n")
    body = {"model": "frompath", "path": str(tmp_path / "Modelfile"), "stream": False}
    assert client.post("/api/create", json=body).json() == {"status": "success"}
    assert client.post("/api/show", json={"model": "frompath"}).json()["system"] == "from a file"


def test_recreate_removes_blobs_only_the_old_manifest_used(client: TestClient, store: Store) -> None:
    lines(client, {"model": "m", "from": "base", "system": "first"})
    old_system = next(x["digest"] for x in manifest_of(store, "m")["layers"] if x["mediaType"].endswith("system"))
    lines(client, {"model": "m", "from": "base", "system": "second"})
    assert not store.has_blob(old_system)
    assert all(store.has_blob(layer["digest"]) for layer in manifest_of(store, "base")["layers"])


ERRORS: list[tuple[dict[str, Any], int, str]] = [
    ({"model": "x"}, 400, "neither 'from' or 'files' was specified"),
    ({"from": "base"}, 400, "invalid model name"),
    ({"model": "../x", "from": "base"}, 400, "invalid model name"),
    ({"model": "a/../../b", "from": "base"}, 400, "invalid model name"),
    ({"model": "/etc/passwd", "from": "base"}, 400, "invalid model name"),
    ({"model": "x", "from": "../../etc"}, 400, "invalid model name"),
    ({"model": "x", "files": {"/abs.gguf": MISSING}}, 400, "file path must be relative"),
    ({"model": "x", "files": {"a/../../b.gguf": MISSING}}, 400, "file path must be relative"),
    ({"model": "x", "files": {"m.gguf": ""}}, 400, "invalid digest format"),
    ({"model": "x", "files": {"m.gguf": "sha256:../../x"}}, 400, "invalid digest format"),
    ({"model": "x", "files": {"m.gguf": MISSING}, "stream": False}, 404, f"blob {MISSING} not found"),
    ({"model": "x", "from": "base", "template": "{{ .Prompt"}, 400, "template error: template: :1: unclosed action"),
    ({"model": "x", "modelfile": ""}, 400, "path or Modelfile are required"),
    ({"model": "x", "modelfile": "FROM base\nBOGUS 1"}, 400, '(line 2): command must be one of "from", "license", '
     '"template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message", or "requires"'),
    ({"model": "x", "from": "base", "adapters": {"a.gguf": MISSING, "b.gguf": MISSING}}, 400,
     "only one adapter is currently supported"),
    ({"model": "x", "from": "nope", "stream": False}, 404, "model 'nope:latest' not found"),
]


@pytest.mark.parametrize(("body", "status", "error"), ERRORS)
def test_create_errors(client: TestClient, store: Store, body: dict[str, Any], status: int, error: str) -> None:
    before = blob_names(store)
    response = client.post("/api/create", json=body)
    assert (response.status_code, response.json()) == (status, {"error": error})
    assert [name.display for name in store.list_names()] == ["base:latest"]
    assert blob_names(store) == before


def test_missing_base_is_an_error_line_when_streaming(client: TestClient) -> None:
    assert lines(client, {"model": "x", "from": "nope"}) == [{"error": "model 'nope:latest' not found"}]


def test_uploaded_non_gguf_is_rejected(client: TestClient) -> None:
    digest = digest_of(b"not a gguf")
    client.post(f"/api/blobs/{digest}", content=b"not a gguf")
    response = client.post("/api/create", json={"model": "x", "files": {"a.gguf": digest}, "stream": False})
    assert (response.status_code, response.json()) == (400, {"error": "supplied file was not in GGUF format"})


# ------------------------------------------------------------------------------------------- blobs


def test_blob_digest_mismatch_leaves_nothing(client: TestClient, store: Store) -> None:
    before = blob_names(store)
    claimed = digest_of(b"something else")
    response = client.post(f"/api/blobs/{claimed}", content=b"payload")
    assert response.status_code == 400
    assert response.json() == {"error": f'digest mismatch, expected "{claimed}", got "{digest_of(b"payload")}"'}
    assert blob_names(store) == before


@pytest.mark.parametrize("method", ["HEAD", "POST"])
def test_blob_bad_digest(client: TestClient, method: str) -> None:
    response = client.request(method, "/api/blobs/sha256:1234", content=b"x")
    assert response.status_code == 400
    if method == "POST":
        assert response.json() == {"error": "invalid digest format"}


# ------------------------------------------------------------------------------------------- copy, delete


def test_copy_shares_blobs_and_keeps_manifest_bytes(client: TestClient, store: Store) -> None:
    assert client.post("/api/copy", json={"source": "base", "destination": "ns/alias:v1"}).status_code == 200
    assert store.read_manifest(ModelName.parse("ns/alias:v1")).raw == store.read_manifest(ModelName.parse("base")).raw
    assert client.post("/api/copy", json={"source": "base", "destination": "BASE:latest"}).status_code == 200


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"source": "../x", "destination": "y"}, 400, 'source "../x" is invalid'),
    ({"source": "base", "destination": "a/../../b"}, 400, 'destination "a/../../b" is invalid'),
    ({"source": "nope", "destination": "y"}, 404, 'model "nope" not found'),
    ({}, 400, 'source "" is invalid'),
])
def test_copy_errors(client: TestClient, body: dict[str, str], status: int, error: str) -> None:
    response = client.post("/api/copy", json=body)
    assert (response.status_code, response.json()) == (status, {"error": error})


def test_delete_copy_keeps_blobs_then_last_reference_removes_them(client: TestClient, store: Store) -> None:
    lines(client, {"model": "own", "from": "base", "system": "mine"})
    client.post("/api/copy", json={"source": "own", "destination": "own-copy"})
    digests = {layer["digest"] for layer in manifest_of(store, "own")["layers"]}
    assert client.request("DELETE", "/api/delete", json={"model": "own-copy"}).status_code == 200
    assert all(store.has_blob(digest) for digest in digests)
    assert client.request("DELETE", "/api/delete", json={"name": "OWN"}).status_code == 200
    base = {layer["digest"] for layer in manifest_of(store, "base")["layers"]}
    assert {digest for digest in digests if store.has_blob(digest)} == base  # the system layer went
    assert len(digests - base) == 1
    assert not (store.manifests / "registry.ollama.ai" / "library" / "own").exists()


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"model": "nope"}, 404, "model 'nope' not found"),
    ({"model": "../../x"}, 400, 'name "../../x" is invalid'),
    ({}, 400, 'name "" is invalid'),
])
def test_delete_errors(client: TestClient, body: dict[str, str], status: int, error: str) -> None:
    response = client.request("DELETE", "/api/delete", json=body)
    assert (response.status_code, response.json()) == (status, {"error": error})


def test_tags_digest_size_and_order(client: TestClient, store: Store) -> None:
    lines(client, {"model": "newer", "from": "base", "system": "s"})
    models = client.get("/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["newer:latest", "base:latest"]
    stored = store.read_manifest(ModelName.parse("newer"))
    assert models[0]["digest"] == hashlib.sha256(stored.raw).hexdigest()
    assert models[0]["size"] == stored.manifest.size
