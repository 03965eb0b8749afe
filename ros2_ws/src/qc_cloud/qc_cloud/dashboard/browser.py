"""Headless Debian chromium driven by Selenium, for the browser tests, the screenshots and the benchmark.
Uses the system's chromedriver (apt: chromium-driver): nothing is downloaded at run time."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def chromium(width: int = 1280, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        raise RuntimeError("chromium and chromedriver are needed: apt-get install chromium chromium-driver")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--window-size={width},{height}",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def available() -> str | None:
    """None when a browser test can run, else why not."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements/fleet.txt)"
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
        return "chromium / chromedriver are not installed (scripts/setup.sh: apt chromium chromium-driver)"
    return None


def wait_for(condition: Callable[[], T], timeout: float = 60.0, what: str = "condition", step: float = 0.2) -> T:
    """condition()'s first truthy value within timeout s, else AssertionError naming `what`. A page that re-renders
    an element between finding it and reading it (stale), or has not rendered it yet, counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    end = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (StaleElementReferenceException, NoSuchElementException):
            value = None
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)
