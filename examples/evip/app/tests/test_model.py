from datetime import datetime, timezone

from predictor.model import QUARTERS_PER_DAY, load_readings, quarter_of_day, train


def test_each_site_gets_a_full_daily_profile():
    models = train()
    assert set(models) == {"depot-north", "mall-west"}
    for m in models.values():
        assert len(m.profile) == QUARTERS_PER_DAY
        assert 0.0 <= m.persistence <= 1.0


def test_the_evening_peak_is_learned():
    m = train()["depot-north"]
    assert m.profile[quarter_of_day(datetime(2024, 9, 10, 18, 30))] > 3 * m.profile[quarter_of_day(datetime(2024, 9, 10, 3, 0))]


def test_predictions_beat_the_daily_mean_on_the_last_day():
    readings = load_readings()["mall-west"]
    train_part, test_part = readings[:-QUARTERS_PER_DAY], readings[-QUARTERS_PER_DAY:]
    from predictor.model import fit_site

    m = fit_site(train_part)
    mean = sum(kw for _, kw in train_part) / len(train_part)
    model_err = sum(abs(m.predict_next(t0, k0) - k1) for (t0, k0), (_, k1) in zip(test_part, test_part[1:]))
    mean_err = sum(abs(mean - k1) for _, k1 in test_part[1:])
    assert model_err < 0.5 * mean_err


def test_a_prediction_is_never_negative():
    m = train()["mall-west"]
    assert m.predict_next(datetime(2024, 9, 10, 3, 0, tzinfo=timezone.utc), 0.0) >= 0.0
