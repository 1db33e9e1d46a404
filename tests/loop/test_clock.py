"""The paced clock: simulated (jumps), accelerated and live pacing, lateness reporting."""

from __future__ import annotations

import math
import time

import pytest

from bpcontrol.clock import PacedClock


class FakeWall:
    """A wall clock the test moves; sleeping advances it by the requested time plus a lag."""

    def __init__(self, lag_s: float = 0.0) -> None:
        self.now = 100.0
        self.lag_s = lag_s
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s + self.lag_s


def test_simulated_clock_jumps_and_never_goes_back() -> None:
    clock = PacedClock(math.inf, t0_h=2.0)
    assert clock.simulated and clock.now() == 2.0
    assert clock.sleep_until(5.0) == 0.0
    assert clock.now() == 5.0
    clock.sleep_until(4.0)
    assert clock.now() == 5.0


def test_accelerated_clock_sleeps_the_scaled_period() -> None:
    wall = FakeWall()
    clock = PacedClock(1800.0, wall=wall, sleep=wall.sleep)
    late = clock.sleep_until(0.5)  # 0.5 h at 1800x = 1 s of wall time
    assert wall.slept == [pytest.approx(1.0)]
    assert late == pytest.approx(0.0)
    assert clock.now() == pytest.approx(0.5)


def test_lateness_is_the_overshoot_of_the_wake_up() -> None:
    wall = FakeWall(lag_s=0.003)
    clock = PacedClock(1.0, wall=wall, sleep=wall.sleep)
    assert clock.sleep_until(10 / 3600) == pytest.approx(0.003)
    wall.now += 2.0  # the work overran by 2 s past the next due time
    assert clock.sleep_until(11 / 3600) == pytest.approx(1.003)
    assert len(wall.slept) == 1  # no sleep when already late


def test_live_clock_keeps_real_time() -> None:
    clock = PacedClock(1.0)
    start = time.monotonic()
    late = clock.sleep_until(0.2 / 3600)  # 0.2 s
    assert 0.2 <= time.monotonic() - start < 0.5
    assert 0.0 <= late < 0.2


@pytest.mark.parametrize("speed", [0.0, -1.0, float("nan")])
def test_bad_speed_is_refused(speed: float) -> None:
    with pytest.raises(ValueError, match="speed_up"):
        PacedClock(speed)
