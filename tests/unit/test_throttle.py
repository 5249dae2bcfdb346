"""The sweeper's tasks that look less often than it runs (payment checks, monthly statements)."""
from __future__ import annotations


def test_a_sweeper_task_throttled_to_an_interval_runs_once_per_interval(monkeypatch):
    from jobs import settings

    clock = [1000.0]
    monkeypatch.setattr(settings.time, "monotonic", lambda: clock[0])
    throttle = settings.Throttle()
    assert throttle.due(60)  # the first look is due at once
    assert not throttle.due(60)
    clock[0] += 59.9
    assert not throttle.due(60)
    clock[0] += 0.1
    assert throttle.due(60)
    assert not throttle.due(60)
    throttle.reset()
    assert throttle.due(60)
