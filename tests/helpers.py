"""Small helpers shared by the threaded-source tests (imported as `helpers`: tests/ is on sys.path under pytest)."""

from __future__ import annotations

import time
from typing import Callable


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``cond`` every 5 ms until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")
