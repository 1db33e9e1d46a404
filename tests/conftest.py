"""Test-wide settings: float64 JAX, seeded randomness, a headless matplotlib backend; a real
headless browser (Debian's chromium through its chromedriver) for the web pages."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator so every random test is reproducible."""
    return np.random.default_rng(20261124)


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian chromium through selenium (skipped where it is not installed); its
    console log is kept, so a test can assert that a page raised no error."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("Debian's chromium and chromedriver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
