"""The window-level scheduler over the digit-tagging critic: turn-taking, cancellation and failure isolation."""

from __future__ import annotations

from typing import Any, Sequence

import pytest

from cprs_core import (
    CompressionFailedError,
    CompressionRequest,
    CompressionResult,
    CPRSCompressor,
    CPRSError,
    TextDecodingError,
    WindowScheduler,
    WindowScores,
)
from cprs_core.engine import WindowParallelEngine

QUERY = "Which numbers appear?"
SHORT = "We counted 42 cats and 7 dogs."


def long_context(phrases: int) -> str:
    return " ".join(f"Entry {i} of the ledger was read aloud." for i in range(phrases))


def request(context: str, query: str = QUERY) -> CompressionRequest:
    return CompressionRequest(context, query, "needle", granularity="sentence")


class Outcomes(dict[str, Any]):
    def keep(self, name: str) -> Any:
        return lambda outcome: self.__setitem__(name, outcome)


def test_a_short_request_waits_about_one_step_behind_a_long_one(digit_compressor: CPRSCompressor) -> None:
    scheduler = WindowScheduler(digit_compressor.engine, step_windows=2)
    done = Outcomes()
    long_ticket = scheduler.ticket(request(long_context(200)), done.keep("long"))
    scheduler.add(long_ticket)
    assert scheduler.step() == {long_ticket: 2}
    first = scheduler.ticket(request(SHORT, query="Count the animals."), done.keep("first"))
    scheduler.add(first)
    assert scheduler.step() == {long_ticket: 2}  # a newcomer (the long one) just went first: the next turn is not
    assert scheduler.step() == {first: 1}  # a newcomer's, then the short one is done, the long one far from it
    other_prefix = scheduler.ticket(request(SHORT, query="Count the animals."), done.keep("short"))
    scheduler.add(other_prefix)
    assert scheduler.step() == {long_ticket: 2}  # again: the last turn was a newcomer's
    assert scheduler.step() == {other_prefix: 1}
    third = scheduler.ticket(request(SHORT, query="How many dogs?"), done.keep("third"))
    scheduler.add(third)
    assert scheduler.step() == {long_ticket: 2}
    newest = scheduler.ticket(request(SHORT, query="How many cats?"), done.keep("newest"))
    scheduler.add(newest)
    assert scheduler.step() == {third: 1} and scheduler.step() == {long_ticket: 2}  # newcomers take turns with it
    assert scheduler.step() == {newest: 1}
    assert done["short"].text == done["first"].text == digit_compressor.compress(SHORT, "Count the animals.", "needle", granularity="sentence").text
    same_prefix = scheduler.ticket(request(SHORT), done.keep("same"))
    scheduler.add(same_prefix)
    assert scheduler.step() == {long_ticket: 1, same_prefix: 1}  # same prompt: one shared batch, windows in turn
    assert "long" not in done and long_ticket.remaining > 0
    while scheduler.active:
        scheduler.step()
    assert done["long"] == digit_compressor.engine.compress_batch([request(long_context(200))])[0]


def test_a_cancelled_request_scores_no_more_windows(digit_compressor: CPRSCompressor) -> None:
    scheduler = WindowScheduler(digit_compressor.engine, step_windows=1)
    done = Outcomes()
    ticket = scheduler.ticket(request(long_context(100)), done.keep("long"))
    scheduler.add(ticket)
    scheduler.step()
    ticket.cancel()
    assert scheduler.step() == {} and scheduler.active == 0
    assert len(ticket.scores) == 1 and done == {}


class PoisonedCritic:
    """The digit critic, failing (like a kernel on bad data) on any window holding the ``poison`` token."""

    def __init__(self, critic: Any, poison: int) -> None:
        self._critic = critic
        self.poison = poison
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._critic, name)

    def score_windows(self, prefix_ids: list[int], windows: Sequence[list[int]], tags: Sequence[str]) -> list[WindowScores]:
        self.calls.append(len(windows))
        if any(self.poison in window for window in windows):
            raise RuntimeError("device-side assert triggered")
        return self._critic.score_windows(prefix_ids, windows, tags)


def test_a_failing_shared_batch_fails_only_the_request_that_broke_it(digit_compressor: CPRSCompressor) -> None:
    critic = digit_compressor.engine.critic
    poison = critic.tokenize_context("A zebra ate 3 apples.").ids[1]  # " zebra"
    engine = WindowParallelEngine(PoisonedCritic(critic, poison), window_size=digit_compressor.window_size)
    requests = [request(SHORT), request("A zebra ate 3 apples."), request(long_context(30)), request("x \ud800")]
    outcomes = engine.compress_batch(requests)
    assert isinstance(outcomes[1], CompressionFailedError) and "device-side assert" in str(outcomes[1])
    assert isinstance(outcomes[1].__cause__, RuntimeError)
    assert isinstance(outcomes[3], TextDecodingError) and "context holds a lone surrogate" in str(outcomes[3])
    expected = digit_compressor.compress_batch([requests[0], requests[2]])
    assert [outcomes[0], outcomes[2]] == expected
    assert all(isinstance(outcome, CompressionResult) for outcome in expected)
    assert engine.critic.calls[0] > 1 and len(engine.critic.calls) == 4  # one shared call, then one per request


def test_step_windows_must_be_positive(digit_compressor: CPRSCompressor) -> None:
    with pytest.raises(ValueError, match="step_windows must be at least 1"):
        WindowScheduler(digit_compressor.engine, step_windows=0)
    assert issubclass(CompressionFailedError, CPRSError)
