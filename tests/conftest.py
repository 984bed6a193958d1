"""Shared fixtures: real brokers, databases and simulators (plugins below), and the task-leak check.

Every async test runs under `no_leaked_tasks`: set up before its other fixtures, so its check
runs after they are torn down, and fails the test if a task it started is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator

import pytest

pytest_plugins = ["conftest_mqtt", "conftest_modbus", "conftest_opcua", "conftest_displays"]


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail the test if tasks it started are still running after it (and its fixtures) end."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = {t for t in asyncio.all_tasks() if t not in before and t is not current}
    if leaked:
        # Tasks cancelled during teardown need a loop iteration or two to finish.
        _, leaked = await asyncio.wait(leaked, timeout=1.0)
    if leaked:
        names = sorted(t.get_name() for t in leaked)
        for task in leaked:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*leaked, return_exceptions=True)
        pytest.fail(f"test leaked {len(names)} asyncio task(s): {names}")


@pytest.fixture(autouse=True)
def _every_async_test_checks_leaks(request: pytest.FixtureRequest) -> None:
    """The leak check for every coroutine test (autouse fixtures set up first, tear down last)."""
    if inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("no_leaked_tasks")
