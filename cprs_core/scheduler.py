"""Window-level scheduling: the windows of many requests share forward batches, request by request in turn.

Like continuous batching in LLM servers: a request joins the running set at any time, and every
:meth:`WindowScheduler.step` scores at most ``step_windows`` windows, taken round-robin from the requests that
share a prompt prefix with the request whose turn it is. A request that just joined has the next turn (but
newcomers never get two turns in a row, so a stream of them cannot starve the others). A short request
therefore waits for about the step in progress, not for a 500K-token request to finish; a cancelled request's remaining windows are never scored; and a
failure is confined to the request whose windows caused it (a failed shared batch is retried request by request).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Callable, Hashable, Sequence

from .critic import WindowScores
from .errors import CompressionFailedError, CPRSError
from .result import CompressionResult

if TYPE_CHECKING:
    from .engine import CompressionRequest, ProgressCallback, WindowParallelEngine, _Prepared

Outcome = CompressionResult | CPRSError
"""What a request ends with: its result, or its own error."""


class Ticket:
    """One request inside a :class:`WindowScheduler`: its windows, the scores so far, and how it ended.

    Attributes:
        on_done: called once, on the scheduler's thread, with the request's outcome (not after :meth:`cancel`).
        started_at: ``time.monotonic()`` when its first window was scored (``None`` before).
    """

    def __init__(self, prepared: _Prepared, on_done: Callable[[Outcome], None]) -> None:
        self.prepared = prepared
        self.on_done = on_done
        self.scores: list[WindowScores] = []
        self.started_at: float | None = None
        self._cancelled = False

    @property
    def key(self) -> Hashable:
        """Requests with equal keys (same prompt prefix and tags) can share a forward batch."""
        return tuple(self.prepared.plan.prefix_ids), tuple(self.prepared.tags)

    @property
    def tokens(self) -> int:
        return len(self.prepared.tokens.ids)

    @property
    def windows(self) -> int:
        return len(self.prepared.plan.windows)

    @property
    def remaining(self) -> int:
        return self.windows - len(self.scores)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stop scoring this request; safe from any thread (the scheduler drops it before its next step)."""
        self._cancelled = True

    def next_windows(self, count: int) -> list[list[int]]:
        """Token ids of the next ``count`` unscored windows."""
        ids, first = self.prepared.tokens.ids, len(self.scores)
        return [ids[window.start : window.stop] for window in self.prepared.plan.windows[first : first + count]]


class WindowScheduler:
    """Scores the windows of the requests it holds, ``step_windows`` at a time, in turn (not thread-safe:
    one thread calls :meth:`add` and :meth:`step`; :meth:`Ticket.cancel` may come from any thread).

    Args:
        engine: the engine whose critic scores and which assembles the results.
        step_windows: most windows per critic call; ``None`` scores all windows of a prefix group in one call.
        assembler: where a finished request's result is assembled (span decoding and, for cprs-mini under a
            budget, its similarity pass, which costs about as much as the scoring); ``None`` = inline, in
            :meth:`step`. A server passes an executor so one request's assembly never holds up the others' windows.
    """

    def __init__(
        self, engine: WindowParallelEngine, step_windows: int | None = None, assembler: Executor | None = None
    ) -> None:
        if step_windows is not None and step_windows < 1:
            raise ValueError(f"step_windows must be at least 1, got {step_windows}")
        self.engine = engine
        self.step_windows = step_windows
        self.assembler = assembler
        self._fresh: deque[Ticket] = deque()  # no window scored yet, in arrival order
        self._active: deque[Ticket] = deque()  # the others, in turn order
        self._newcomer_went_first = False

    @property
    def active(self) -> int:
        """Requests holding unscored windows."""
        return len(self._fresh) + len(self._active)

    def ticket(self, request: CompressionRequest, on_done: Callable[[Outcome], None]) -> Ticket:
        """Validate and tokenize ``request`` (any thread may call this) into a ticket for :meth:`add`.

        Raises:
            CPRSError: the request's own error (empty context, bad budget, bad text, too large, ...).
        """
        try:
            return Ticket(self.engine._prepare(request), on_done)
        except CPRSError:
            raise
        except Exception as error:  # e.g. a tokenizer failing on odd text: this request's failure only
            raise _failure(error) from error

    def add(self, ticket: Ticket) -> None:
        """Let ``ticket``'s windows join the next steps; a request without windows is answered at once."""
        if ticket.remaining == 0:
            self._finish(ticket)
        else:
            self._fresh.append(ticket)

    def step(self) -> dict[Ticket, int]:
        """Score one forward batch of windows; finished requests get their ``on_done``.

        Returns:
            how many windows of each request the batch held (empty when there was nothing to do).
        """
        self._drop_cancelled()
        if not self.active:
            return {}
        newcomer_first = bool(self._fresh) and not (self._newcomer_went_first and self._active)
        head = self._fresh[0] if newcomer_first else self._active[0]
        self._newcomer_went_first = newcomer_first
        shares = self._shares([head] + [t for t in (*self._fresh, *self._active) if t is not head and t.key == head.key])
        now = time.monotonic()
        for ticket in shares:
            ticket.started_at = ticket.started_at or now
        for ticket, scores in self._score(shares).items():
            queue = self._fresh if ticket in self._fresh else self._active
            if isinstance(scores, CPRSError):
                queue.remove(ticket)
                ticket.on_done(scores)
                continue
            ticket.scores += scores
            if ticket.remaining == 0:
                queue.remove(ticket)
                self._finish(ticket)
            elif queue is self._fresh:
                self._fresh.remove(ticket)
                self._active.append(ticket)  # started: its next turn comes after the others'
        if not newcomer_first and self._active and self._active[0] is head:
            self._active.rotate(-1)  # the next request's turn
        return shares

    def run(self, requests: Sequence[CompressionRequest], progress: ProgressCallback | None = None) -> list[Outcome]:
        """Compress ``requests`` to the end; each slot holds its result or its own error, in order."""
        outcomes: list[Outcome | None] = [None] * len(requests)
        tickets: list[Ticket] = []
        for index, request in enumerate(requests):
            try:
                tickets.append(self.ticket(request, lambda outcome, index=index: outcomes.__setitem__(index, outcome)))
            except CPRSError as error:
                outcomes[index] = error
        total = sum(ticket.windows for ticket in tickets)
        for ticket in tickets:
            self.add(ticket)
        scored = 0
        while self.active:
            scored += sum(self.step().values())
            if progress is not None:
                progress(scored, total)
        return outcomes  # type: ignore[return-value]

    def _drop_cancelled(self) -> None:
        for queue in (self._fresh, self._active):
            for ticket in [ticket for ticket in queue if ticket.cancelled]:
                queue.remove(ticket)

    def _shares(self, group: list[Ticket]) -> dict[Ticket, int]:
        """Windows each request of ``group`` gets in this step: one at a time, in turn, up to ``step_windows``."""
        if self.step_windows is None or sum(ticket.remaining for ticket in group) <= self.step_windows:
            return {ticket: ticket.remaining for ticket in group}
        shares = dict.fromkeys(group, 0)
        budget = self.step_windows
        while budget:
            for ticket in group:
                if budget and shares[ticket] < ticket.remaining:
                    shares[ticket] += 1
                    budget -= 1
        return {ticket: share for ticket, share in shares.items() if share}

    def _score(self, shares: dict[Ticket, int]) -> dict[Ticket, list[WindowScores] | CPRSError]:
        """Each request's scores for its share, in one critic call; if that fails, one call per request."""
        first = next(iter(shares))
        prefix_ids, tags = first.prepared.plan.prefix_ids, first.prepared.tags
        parts = {ticket: ticket.next_windows(share) for ticket, share in shares.items()}
        try:
            scores = iter(self.engine.critic.score_windows(prefix_ids, [w for part in parts.values() for w in part], tags))
            return {ticket: [next(scores) for _ in part] for ticket, part in parts.items()}
        except Exception as error:
            if len(parts) == 1:
                return {first: _failure(error)}
        outcomes: dict[Ticket, list[WindowScores] | CPRSError] = {}
        for ticket, part in parts.items():
            try:
                outcomes[ticket] = self.engine.critic.score_windows(prefix_ids, part, tags)
            except Exception as error:
                outcomes[ticket] = _failure(error)
        return outcomes

    def _finish(self, ticket: Ticket) -> None:
        if self.assembler is None:
            self._assemble(ticket)
        else:
            self.assembler.submit(self._assemble, ticket)

    def _assemble(self, ticket: Ticket) -> None:
        try:
            outcome: Outcome = self.engine._assemble(ticket.prepared, ticket.scores)
        except Exception as error:
            outcome = _failure(error)
        ticket.on_done(outcome)


def _failure(error: Exception) -> CPRSError:
    """``error`` itself when it is a :class:`CPRSError`, else a :class:`CompressionFailedError` naming it."""
    if isinstance(error, CPRSError):
        return error
    failure = CompressionFailedError(f"compressing this request failed: {type(error).__name__}: {error}")
    failure.__cause__ = error
    return failure
