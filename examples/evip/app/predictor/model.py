"""A small, explainable load model: the site's mean daily profile per quarter hour, plus the
persistence of the latest deviation from it (one coefficient fitted by least squares)."""

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

QUARTERS_PER_DAY = 96
DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "ev_load_15min.csv"


def quarter_of_day(ts: datetime) -> int:
    return ts.hour * 4 + ts.minute // 15


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class SiteModel:
    profile: list  # mean kW per quarter of day
    persistence: float  # share of the latest deviation that carries into the next quarter

    def predict_next(self, last_time: datetime, last_kw: float) -> float:
        q = quarter_of_day(last_time)
        nxt = (q + 1) % QUARTERS_PER_DAY
        deviation = last_kw - self.profile[q]
        return max(0.0, self.profile[nxt] + self.persistence * deviation)


def load_readings(path: Path = DEFAULT_DATA) -> dict:
    by_site = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            by_site[row["site"]].append((parse_time(row["timestamp"]), float(row["kw"])))
    for readings in by_site.values():
        readings.sort()
    return dict(by_site)


def fit_site(readings: list) -> SiteModel:
    sums = [0.0] * QUARTERS_PER_DAY
    counts = [0] * QUARTERS_PER_DAY
    for ts, kw in readings:
        q = quarter_of_day(ts)
        sums[q] += kw
        counts[q] += 1
    overall = sum(kw for _, kw in readings) / len(readings)
    profile = [s / c if c else overall for s, c in zip(sums, counts)]
    num = den = 0.0
    for (t0, k0), (t1, k1) in zip(readings, readings[1:]):
        if t1 - t0 != timedelta(minutes=15):
            continue
        d0 = k0 - profile[quarter_of_day(t0)]
        d1 = k1 - profile[quarter_of_day(t1)]
        num += d0 * d1
        den += d0 * d0
    persistence = min(max(num / den, 0.0), 1.0) if den else 0.0
    return SiteModel(profile=profile, persistence=persistence)


def train(path: Path = DEFAULT_DATA) -> dict:
    """One model per site in the CSV (columns site, timestamp, kw)."""
    return {site: fit_site(readings) for site, readings in load_readings(path).items()}


def to_json(models: dict) -> str:
    """The fitted models as the JSON document pushed as the model artifact."""
    return json.dumps(
        {site: {"profile": m.profile, "persistence": m.persistence} for site, m in sorted(models.items())},
        sort_keys=True,
    )


def from_json(text: bytes) -> dict:
    """Models read back from `to_json`'s document; anything else is refused."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or not doc:
        raise ValueError("a model document maps site names to models")
    models = {}
    for site, m in doc.items():
        profile, persistence = m["profile"], float(m["persistence"])
        if len(profile) != QUARTERS_PER_DAY or not 0.0 <= persistence <= 1.0:
            raise ValueError(f"site {site}: {QUARTERS_PER_DAY} profile values and a persistence in [0, 1]")
        models[str(site)] = SiteModel(profile=[float(x) for x in profile], persistence=persistence)
    return models
