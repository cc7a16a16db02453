"""Hear coglet's cancel for the stream an `async def run()` returns.

coglet 0.23.1 streams a concurrent prediction only when an async run() returns a plain generator
(an async generator is collected whole). It then iterates that generator on the slot's own thread,
after the coroutine's future has completed. On `POST /predictions/{id}/cancel` (or a client going
away) its worker marks the slot cancelled and calls `future.cancel()` on the
`concurrent.futures.Future` that `asyncio.run_coroutine_threadsafe` returned for the coroutine
(crates/coglet-python/src/worker_bridge.rs `cancel` -> `cancel_async_future`). That future is
already done, so the call does nothing, no exception reaches the generator, and it runs to its end.

`on_cancel(callback)`, called inside that coroutine, finds the future (asyncio's
`_chain_future` keeps it in the task's done-callback `_call_set_state`) and wraps its `cancel`
method on the instance, so coglet's call also runs `callback` (from coglet's cancel thread).
This leans on CPython asyncio internals (Task._callbacks, the closure of _call_set_state): if they
are not found it returns False and nothing changes (cancel then only marks the prediction).
"""

import asyncio
import concurrent.futures
from collections.abc import Callable


def prediction_future() -> concurrent.futures.Future | None:
    """The future coglet holds for the running coroutine (the one it cancels), if found."""
    task = asyncio.current_task()
    for callback, _context in getattr(task, "_callbacks", None) or ():
        for cell in getattr(callback, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(value, concurrent.futures.Future):
                return value
    return None


def on_cancel(callback: Callable[[], None]) -> bool:
    """Run `callback()` when coglet cancels the prediction this coroutine serves, also after the
    coroutine has returned its stream. Returns whether the hook could be installed."""
    future = prediction_future()
    if future is None:
        return False
    original = future.cancel

    def cancel() -> bool:
        callback()
        return original()

    future.cancel = cancel  # coglet calls the method by name, so the instance attribute wins
    return True
