"""The paced clock: simulated (jumps), accelerated and live pacing, lateness reporting; the
stepped clock of a HIL device in lockstep."""

from __future__ import annotations

import math
import time

import pytest

from bpcontrol.clock import PacedClock, SteppedClock


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
    # in slices of at most 0.25 s, so that an interrupt ends a wait soon
    assert sum(wall.slept) == pytest.approx(1.0) and max(wall.slept) <= 0.25
    assert late == pytest.approx(0.0)
    assert clock.now() == pytest.approx(0.5)


def test_an_interrupt_cuts_the_wait_short_until_restart() -> None:
    wall = FakeWall()
    clock = PacedClock(1.0, wall=wall, sleep=wall.sleep)

    def sleep_then_interrupt(s: float) -> None:
        wall.sleep(s)
        clock.interrupt()  # as a signal handler would, during the first slice

    clock._sleep = sleep_then_interrupt
    assert clock.sleep_until(1.0) == 0.0  # a 3600 s wait
    assert sum(wall.slept) == pytest.approx(0.25)
    assert clock.sleep_until(2.0) == 0.0 and len(wall.slept) == 1  # later waits: none
    clock._sleep = wall.sleep
    clock.restart()
    clock.sleep_until(1 / 3600)  # one wall second, waited in full again
    assert sum(wall.slept[1:]) == pytest.approx(1.0)


def test_lateness_is_the_overshoot_of_the_wake_up() -> None:
    wall = FakeWall(lag_s=0.003)
    clock = PacedClock(1.0, wall=wall, sleep=wall.sleep)
    assert clock.sleep_until(10 / 3600) == pytest.approx(0.003)
    slices = len(wall.slept)
    wall.now += 2.0  # the work overran by 2 s past the next due time
    assert clock.sleep_until(11 / 3600) == pytest.approx(1.003)
    assert len(wall.slept) == slices  # no sleep when already late


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


def test_stepped_clock_moves_only_when_stepped_and_never_back() -> None:
    clock = SteppedClock(1.0)
    assert clock.now() == 1.0
    time.sleep(0.01)
    assert clock.now() == 1.0  # wall time does not move it
    assert clock.step_to(2.5) == 2.5 and clock.now() == 2.5
    assert clock.step_to(2.0) == 2.5  # never backwards
    assert clock.sleep_until(3.0) == 0.0 and clock.now() == 3.0
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match="finite"):
            clock.step_to(bad)
    with pytest.raises(ValueError, match="t0_h"):
        SteppedClock(math.nan)
