"""Checks that an awaitable lets the event loop run (blocking work belongs in a worker thread)."""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def ticks_while(awaitable: Awaitable[T]) -> tuple[T, int]:
    """Await ``awaitable`` while a ticker task counts its turns; returns the result and how often it ticked."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    before = ticks
    try:
        result = await awaitable
    finally:
        task.cancel()
    return result, ticks - before
