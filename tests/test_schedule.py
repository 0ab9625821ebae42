"""Learning-rate schedules against hand-computed values."""
from __future__ import annotations

import math

import pytest

from charrnn.config import TrainConfig
from charrnn.errors import ConfigError
from charrnn.model.schedule import lr_at, step_decays, total_iterations, warmup_factor


def cfg(**kw):
    return TrainConfig(**kw)


def test_constant():
    c = cfg(lr=0.01)
    assert lr_at(c, 0, 0.0, None) == 0.01
    assert lr_at(c, 123456, 77.5, 1000) == 0.01


def test_warmup_ramps_linearly_then_stops():
    c = cfg(lr=0.1, warmup_iters=4)
    got = [lr_at(c, i, 0.0, None) for i in range(6)]
    assert got == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    assert warmup_factor(c, 0) == 0.25
    assert warmup_factor(cfg(warmup_iters=0), 0) == 1.0


def test_step_schedule_char_rnn_defaults():
    c = cfg(lr=2e-3, schedule="step", lr_decay=0.97, decay_after=10, decay_every=1)
    assert lr_at(c, 0, 0.0) == 2e-3
    assert lr_at(c, 10, 9.99) == 2e-3
    assert lr_at(c, 10, 10.0) == pytest.approx(2e-3 * 0.97)
    assert lr_at(c, 10, 10.5) == pytest.approx(2e-3 * 0.97)
    assert lr_at(c, 10, 11.0) == pytest.approx(2e-3 * 0.97 ** 2)
    assert lr_at(c, 10, 14.2) == pytest.approx(2e-3 * 0.97 ** 5)
    # an epoch computed as 30 / 3 with float error still counts as the boundary
    assert step_decays(c, 29.999999999999996 / 3.0) == 1


def test_step_schedule_decay_every_and_from_start():
    c = cfg(lr=1.0, schedule="step", lr_decay=0.5, decay_after=2, decay_every=3)
    # decays at the end of epochs 2, 5, 8, ...
    expected = {0.0: 1.0, 1.9: 1.0, 2.0: 0.5, 4.9: 0.5, 5.0: 0.25, 7.99: 0.25, 8.0: 0.125}
    for epoch, want in expected.items():
        assert lr_at(c, 0, epoch) == pytest.approx(want), epoch
    c0 = cfg(lr=1.0, schedule="step", lr_decay=0.5, decay_after=0, decay_every=2)
    # decay_after 0: the first end-of-epoch boundary is epoch decay_every
    assert [step_decays(c0, e) for e in (0.0, 1.5, 2.0, 3.9, 4.0)] == [0, 0, 1, 1, 2]


def test_cosine_over_iterations():
    c = cfg(lr=1.0, schedule="cosine", min_lr_frac=0.1)
    assert lr_at(c, 0, 0.0, 100) == pytest.approx(1.0)
    assert lr_at(c, 50, 0.0, 100) == pytest.approx(0.55)                # (1 + 0.1) / 2
    assert lr_at(c, 25, 0.0, 100) == pytest.approx(0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2)
    assert lr_at(c, 100, 0.0, 100) == pytest.approx(0.1)
    assert lr_at(c, 150, 0.0, 100) == pytest.approx(0.1)                 # stays at the floor


def test_cosine_with_warmup_starts_after_warmup():
    c = cfg(lr=1.0, schedule="cosine", min_lr_frac=0.0, warmup_iters=10)
    assert lr_at(c, 0, 0.0, 110) == pytest.approx(0.1)
    assert lr_at(c, 9, 0.0, 110) == pytest.approx(1.0)
    assert lr_at(c, 10, 0.0, 110) == pytest.approx(1.0)
    assert lr_at(c, 60, 0.0, 110) == pytest.approx(0.5)
    assert lr_at(c, 110, 0.0, 110) == pytest.approx(0.0, abs=1e-15)
    # a run shorter than its warm-up: warm-up still ramps, then the floor
    assert lr_at(c, 4, 0.0, 5) == pytest.approx(0.5)
    assert lr_at(c, 12, 0.0, 5) == pytest.approx(0.0, abs=1e-15)


def test_cosine_over_time_budget():
    c = cfg(lr=2.0, schedule="cosine", min_lr_frac=0.5)
    assert lr_at(c, 7, 0.0, None, progress=0.0) == pytest.approx(2.0)
    assert lr_at(c, 7, 0.0, None, progress=0.5) == pytest.approx(1.5)
    assert lr_at(c, 7, 0.0, None, progress=1.0) == pytest.approx(1.0)
    # both limits: whichever is further along wins
    assert lr_at(c, 50, 0.0, 100, progress=0.1) == pytest.approx(1.5)
    assert lr_at(c, 10, 0.0, 100, progress=0.5) == pytest.approx(1.5)
    with pytest.raises(ConfigError, match="cosine schedule needs the run length"):
        lr_at(c, 0, 0.0, None)


def test_total_iterations():
    assert total_iterations(cfg(max_iters=0, max_epochs=3), 40) == 120
    assert total_iterations(cfg(max_iters=100, max_epochs=3), 40) == 100
    assert total_iterations(cfg(max_iters=500, max_epochs=3), 40) == 120
    # no limit at all: the default epoch cap; a time budget alone: no length in updates
    assert total_iterations(cfg(max_iters=0, max_epochs=0), 40) == 10 * 40
    assert total_iterations(cfg(max_iters=0, max_epochs=0, max_time=60.0), 40) is None
    assert total_iterations(cfg(max_iters=0, max_epochs=2), None) is None


def test_arguments_are_validated():
    c = cfg()
    with pytest.raises(ConfigError, match="iteration"):
        lr_at(c, -1, 0.0)
    with pytest.raises(ConfigError, match="epoch"):
        lr_at(c, 0, float("nan"))
    with pytest.raises(ConfigError, match="total_iters"):
        lr_at(c, 0, 0.0, 0)
    with pytest.raises(ConfigError, match="progress"):
        lr_at(c, 0, 0.0, None, progress=1.5)
