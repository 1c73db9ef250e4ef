"""A small, explainable load model: the site's mean daily profile per quarter hour, plus the
persistence of the latest deviation from it (one coefficient fitted by least squares)."""

import csv
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
