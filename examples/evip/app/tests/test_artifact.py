import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from predictor.app import load_models
from predictor.artifact import ARTIFACT_TYPE, LAYER_TYPE, ArtifactError, fetch, parse_ref
from predictor.model import from_json, to_json, train


def digest(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


@pytest.fixture()
def registry():
    """A registry's read API for one repository, serving what the test puts in `objects`."""
    objects = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = objects.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", objects
    server.shutdown()


def push(objects: dict, model: bytes, artifact_type=ARTIFACT_TYPE) -> str:
    objects[f"/v2/evip/models/blobs/{digest(model)}"] = model
    manifest = json.dumps({
        "schemaVersion": 2, "artifactType": artifact_type,
        "layers": [{"mediaType": LAYER_TYPE, "digest": digest(model), "size": len(model)}],
    }).encode()
    objects[f"/v2/evip/models/manifests/{digest(manifest)}"] = manifest
    return f"registry.example/evip/models@{digest(manifest)}"


def test_the_fitted_model_round_trips_through_its_document():
    models = train()
    again = from_json(to_json(models).encode())
    assert sorted(again) == sorted(models)
    assert again["depot-north"].profile == models["depot-north"].profile


def test_the_server_loads_the_bound_digest(registry):
    base, objects = registry
    ref = push(objects, to_json(train()).encode())
    models = load_models({"SLUICE_MODEL_REF": ref, "SLUICE_MODEL_REGISTRY": base})
    assert sorted(models) == ["depot-north", "mall-west"]


def test_a_layer_that_is_not_the_digest_named_is_refused(registry):
    base, objects = registry
    ref = push(objects, to_json(train()).encode())
    for path in list(objects):
        if "/blobs/" in path:
            objects[path] = b'{"tampered": true}'
    with pytest.raises(ArtifactError, match="model layer"):
        fetch(ref, base)


@pytest.mark.parametrize("ref", [
    "registry.example/evip/models:latest",
    "registry.example/evip/models@sha256:abc",
    "models@sha256:" + "0" * 64,
    "registry.example/evip/models@sha256:" + "G" * 64,
])
def test_only_a_reference_by_digest_is_accepted(ref):
    with pytest.raises(ArtifactError):
        parse_ref(ref)


def test_an_image_is_not_a_model(registry):
    base, objects = registry
    ref = push(objects, b"{}", artifact_type="application/vnd.oci.image.config.v1+json")
    with pytest.raises(ArtifactError, match="not a model artifact"):
        fetch(ref, base)


def test_without_a_bound_model_the_bundled_data_is_fitted():
    assert sorted(load_models({})) == ["depot-north", "mall-west"]
