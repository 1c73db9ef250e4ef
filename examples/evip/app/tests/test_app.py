import pytest

from predictor.app import create_app


@pytest.fixture()
def client():
    return create_app().test_client()


def test_healthz_lists_the_sites(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ok", "sites": ["depot-north", "mall-west"], "model": "bundled"}


def test_predict_returns_the_next_quarter(client):
    r = client.post("/predict", json={"site": "depot-north", "readings": [
        {"timestamp": "2024-09-13T18:00:00Z", "kw": 170.0},
        {"timestamp": "2024-09-13T18:15:00Z", "kw": 175.0}]})
    assert r.status_code == 200
    body = r.get_json()
    assert body["timestamp"] == "2024-09-13T18:30:00Z"
    assert 100.0 < body["kw"] < 250.0


@pytest.mark.parametrize("payload,status", [
    (None, 400),
    ({"site": "nowhere", "readings": [{"timestamp": "2024-09-13T18:00:00Z", "kw": 1}]}, 404),
    ({"site": "mall-west", "readings": []}, 400),
    ({"site": "mall-west", "readings": [{"timestamp": "yesterday", "kw": 1}]}, 400),
    ({"site": "mall-west", "readings": [{"timestamp": "2024-09-13T18:00:00Z"}]}, 400),
])
def test_bad_requests_get_a_clear_error(client, payload, status):
    r = client.post("/predict", json=payload) if payload is not None else client.post("/predict", data="x")
    assert r.status_code == status
    assert "error" in r.get_json()
