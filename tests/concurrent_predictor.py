"""A tiny async predictor for the gateway's concurrency tests: it holds each prediction open for a
while, logging a tick every 0.1 s, and ends its output with how many predictions it saw running at
once, so a test can tell that the server really ran them together."""

import asyncio

from cog import AsyncConcatenateIterator, BaseRunner, Input


class Sleeper(BaseRunner):
    def setup(self) -> None:
        self.active = 0

    async def run(self, ticks: int = Input(description="Ticks, 0.1 s apart.", default=5, ge=1, le=600),
                  ) -> AsyncConcatenateIterator[str]:
        self.active += 1
        peak = self.active
        try:
            for i in range(ticks):
                await asyncio.sleep(0.1)
                peak = max(peak, self.active)
                print(f"tick {i}", flush=True)
                yield f"{i} "
            yield f"peak={peak}"
        finally:
            self.active -= 1
