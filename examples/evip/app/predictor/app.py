"""HTTP API: POST /predict with a site and its recent readings; GET /healthz."""

import os
from datetime import timedelta

from flask import Flask, jsonify, request

from .artifact import fetch
from .model import from_json, parse_time, train

MAX_READINGS = 96


def load_models(env=os.environ) -> dict:
    """The model artifact the release bound (SLUICE_MODEL_REF), else a fit of the bundled data.
    A bound model that cannot be fetched or verified stops the server: it never becomes ready."""
    ref = env.get("SLUICE_MODEL_REF", "")
    if ref:
        return from_json(fetch(ref, env.get("SLUICE_MODEL_REGISTRY", "")))
    return train()


def create_app(models=None) -> Flask:
    app = Flask(__name__)
    app.config["MODELS"] = models if models is not None else load_models()
    # Which model answers: the bound artifact's digest, or the data bundled in the image.
    app.config["MODEL_REF"] = os.environ.get("SLUICE_MODEL_REF", "") if models is None else "given"

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", sites=sorted(app.config["MODELS"]), model=app.config["MODEL_REF"] or "bundled")

    @app.post("/predict")
    def predict():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify(error="expected a JSON object"), 400
        model = app.config["MODELS"].get(body.get("site"))
        if model is None:
            return jsonify(error=f"unknown site {body.get('site')!r}"), 404
        readings = body.get("readings")
        if not isinstance(readings, list) or not 1 <= len(readings) <= MAX_READINGS:
            return jsonify(error=f"readings: 1 to {MAX_READINGS} items of {{timestamp, kw}}"), 400
        try:
            last = readings[-1]
            last_time = parse_time(str(last["timestamp"]))
            last_kw = float(last["kw"])
        except (KeyError, TypeError, ValueError):
            return jsonify(error="each reading needs an ISO 8601 timestamp and a numeric kw"), 400
        kw = model.predict_next(last_time, last_kw)
        at = (last_time + timedelta(minutes=15)).isoformat().replace("+00:00", "Z")
        return jsonify(site=body["site"], timestamp=at, kw=round(kw, 1))

    return app


app = create_app()
