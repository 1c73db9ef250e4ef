"""The fitted model as an OCI artifact: the server loads exactly the digest its release names.

Sluice hands the server `SLUICE_MODEL_REF=<registry>/<repository>@sha256:<hex>`; this module reads
that manifest and its one model layer over the registry's HTTP API, checks both digests (a tag
could be moved, a digest cannot) and bounds every read. `SLUICE_MODEL_REGISTRY` may name the base
URL pods reach the registry at (a mirror, or plain HTTP on a local cluster)."""

import hashlib
import json
import urllib.request

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.sluice.model.v1"
LAYER_TYPE = "application/vnd.sluice.model.layer.v1"
MAX_MANIFEST = 64 * 1024
MAX_MODEL = 16 * 1024 * 1024


class ArtifactError(Exception):
    """The artifact is missing, malformed, too large or not the digest asked for."""


def parse_ref(ref: str) -> tuple:
    """`host/repo@sha256:hex` -> (host, repo, digest)."""
    name, sep, digest = ref.partition("@")
    host, slash, repo = name.partition("/")
    hexpart = digest.removeprefix("sha256:")
    if not (sep and slash and repo and digest.startswith("sha256:") and len(hexpart) == 64):
        raise ArtifactError(f"{ref!r}: expected <registry>/<repository>@sha256:<64 hex>")
    if any(c not in "0123456789abcdef" for c in hexpart):
        raise ArtifactError(f"{ref!r}: the digest is not lowercase hex")
    return host, repo, digest


def _get(url: str, accept: str, limit: int) -> bytes:
    if not url.startswith(("http://", "https://")):
        raise ArtifactError(f"{url}: only http(s) registries")
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as response:  # nosec B310 (scheme checked above)
        body = response.read(limit + 1)
    if len(body) > limit:
        raise ArtifactError(f"{url}: larger than {limit} bytes")
    return body


def _checked(body: bytes, digest: str, what: str) -> bytes:
    actual = "sha256:" + hashlib.sha256(body).hexdigest()
    if actual != digest:
        raise ArtifactError(f"{what}: got {actual}, expected {digest}")
    return body


def fetch(ref: str, registry: str = "") -> bytes:
    """The model file of artifact `ref`, its manifest and layer digests verified."""
    host, repo, digest = parse_ref(ref)
    base = (registry or f"https://{host}").rstrip("/")
    manifest_bytes = _checked(
        _get(f"{base}/v2/{repo}/manifests/{digest}", MANIFEST_TYPE, MAX_MANIFEST), digest, "manifest"
    )
    try:
        manifest = json.loads(manifest_bytes)
        layers = [x for x in manifest["layers"] if x["mediaType"] == LAYER_TYPE]
        layer = layers[0]
        layer_digest, size = str(layer["digest"]), int(layer["size"])
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ArtifactError(f"{ref}: not a model artifact ({e})") from e
    if manifest.get("artifactType") != ARTIFACT_TYPE or len(layers) != 1 or not 0 < size <= MAX_MODEL:
        raise ArtifactError(f"{ref}: not a model artifact of one layer of at most {MAX_MODEL} bytes")
    return _checked(_get(f"{base}/v2/{repo}/blobs/{layer_digest}", "*/*", size), layer_digest, "model layer")
