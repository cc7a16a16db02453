"""A discrete-event simulation of a scaled deployment: what `cogkit cost` bills and what users wait.

The model, on purpose small enough to state in a paragraph (README, "What it costs"):
- requests arrive as a Poisson process whose rate follows the traffic shape (one rate per hour);
- an instance serves up to `slots` requests at once; each request holds a slot for an exponentially
  distributed time with the measured mean (so one instance serves `slots / mean` requests a second);
- requests wait in one first-come-first-served queue in front of all instances;
- scale-up: when the queue holds more requests than the instances already booting will take, and
  fewer than `max_instances` are up, one more instance boots; it is billed from the start of its
  boot and serves `boot_s` later;
- scale-down: an instance idle for `idle_timeout_s` is shut down, unless that leaves fewer than
  `min_instances` up; the first `min_instances` are up (and booted) when the simulation starts;
- per-second billing: every second an instance is up (booting, busy or idle) costs the price.

For the steady case (min = max, no boots) this is the M/M/c queue, and `erlang_c_wait` is its closed
form; tests/test_cost.py checks the simulation against it.
"""

import heapq
import math
import random
from dataclasses import dataclass, field


@dataclass
class Fleet:
    """What serves the requests and how it scales."""
    service_s: float  # mean seconds a request holds one slot
    slots: int = 1  # requests one instance serves at once
    boot_s: float = 0.0  # seconds from scale-up to serving
    min_instances: int = 0
    max_instances: int = 1
    idle_timeout_s: float = 60.0

    @property
    def capacity_rps(self) -> float:
        """Requests per second one instance serves when it is always busy."""
        return self.slots / self.service_s


@dataclass
class SimResult:
    seconds: float  # simulated time
    arrivals: int
    served: int
    instance_seconds: float  # billed: up time of every instance, boots included
    busy_slot_seconds: float
    boots: int  # scale-ups (cold starts)
    waits: list = field(repr=False, default_factory=list)  # queue wait of every served request
    cold_waits: list = field(repr=False, default_factory=list)  # waits of requests that waited for a boot
    max_up: int = 0  # most instances up at once
    backlog_at_end: int = 0

    @property
    def mean_instances(self) -> float:
        return self.instance_seconds / self.seconds

    @property
    def mean_wait_s(self) -> float:
        return sum(self.waits) / len(self.waits) if self.waits else 0.0

    def wait_quantile(self, q: float) -> float:
        if not self.waits:
            return 0.0
        ordered = sorted(self.waits)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Instance:
    __slots__ = ("started", "ready", "busy", "idle_since")

    def __init__(self, started: float, ready: bool):
        self.started = started
        self.ready = ready
        self.busy = 0
        self.idle_since = started


ARRIVE, READY, FINISH, IDLE_CHECK = range(4)


def simulate(fleet: Fleet, hourly_rps: list[float], seconds: float | None = None, seed: int = 0) -> SimResult:
    """Run the traffic shape (requests per second, one value per segment; the segments split
    `seconds`, by default one hour each) through the fleet."""
    if fleet.service_s <= 0 or fleet.slots < 1 or fleet.max_instances < max(1, fleet.min_instances):
        raise ValueError("fleet: service_s > 0, slots >= 1 and max_instances >= max(1, min_instances)")
    rng = random.Random(seed)
    seconds = seconds if seconds is not None else 3600.0 * len(hourly_rps)
    segment = seconds / len(hourly_rps)
    events: list = []
    order = 0  # ties break in insertion order

    def push(t, kind, item=None):
        nonlocal order
        order += 1
        heapq.heappush(events, (t, order, kind, item))

    instances: list[_Instance] = [_Instance(0.0, True) for _ in range(fleet.min_instances)]
    queue: list[float] = []  # arrival times, FIFO (head index below)
    head = 0
    result = SimResult(seconds=seconds, arrivals=0, served=0, instance_seconds=0.0, busy_slot_seconds=0.0,
                       boots=0, max_up=len(instances))

    def next_arrival(t: float) -> None:
        # a non-homogeneous Poisson process, piecewise constant: draw within the current segment,
        # and past its end start again from the next segment's rate (memorylessness makes this exact)
        while t < seconds:
            index = min(int(t // segment), len(hourly_rps) - 1)
            rate, end = hourly_rps[index], (index + 1) * segment
            if rate > 0:
                gap = rng.expovariate(rate)
                if t + gap < end:
                    push(t + gap, ARRIVE)
                    return
            t = end

    def stop(inst: _Instance, t: float) -> None:
        result.instance_seconds += t - inst.started
        instances.remove(inst)

    def dispatch(t: float, cold: bool = False) -> None:
        """Waiting requests to the least busy ready instance with a free slot (as the gateway's
        deployment pools do), oldest first. `cold`: an instance has just booted, and the requests it
        takes now were waiting for it (every other slot was busy)."""
        nonlocal head
        while head < len(queue):
            free = [i for i in instances if i.ready and i.busy < fleet.slots]
            if not free:
                return
            inst = min(free, key=lambda i: i.busy)
            arrived = queue[head]
            head += 1
            inst.busy += 1
            wait = t - arrived
            result.waits.append(wait)
            if cold:
                result.cold_waits.append(wait)
            service = rng.expovariate(1.0 / fleet.service_s)
            result.busy_slot_seconds += min(service, max(0.0, seconds - t))
            push(t + service, FINISH, inst)

    def scale_up(t: float) -> None:
        booting = sum(fleet.slots for i in instances if not i.ready)
        while len(queue) - head > booting and len(instances) < fleet.max_instances:
            inst = _Instance(t, False)
            instances.append(inst)
            result.boots += 1
            booting += fleet.slots
            push(t + fleet.boot_s, READY, inst)
        result.max_up = max(result.max_up, len(instances))

    next_arrival(0.0)
    while events:
        t, _, kind, inst = heapq.heappop(events)
        if t > seconds:
            break
        if kind == ARRIVE:
            result.arrivals += 1
            queue.append(t)
            dispatch(t)
            scale_up(t)
            next_arrival(t)
        elif kind == READY:
            if inst in instances:
                inst.ready = True
                inst.idle_since = t
                dispatch(t, cold=True)
                if inst.busy == 0:
                    push(t + fleet.idle_timeout_s, IDLE_CHECK, inst)
        elif kind == FINISH:
            inst.busy -= 1
            result.served += 1
            dispatch(t)
            if inst.busy == 0:
                inst.idle_since = t
                push(t + fleet.idle_timeout_s, IDLE_CHECK, inst)
        elif kind == IDLE_CHECK:
            idle_long_enough = inst.busy == 0 and t - inst.idle_since >= fleet.idle_timeout_s - 1e-9
            if inst in instances and inst.ready and idle_long_enough and len(instances) > fleet.min_instances:
                stop(inst, t)
        if head > 4096 and head * 2 > len(queue):  # drop served entries now and then
            del queue[:head]
            head = 0
    for inst in list(instances):
        stop(inst, seconds)
    result.backlog_at_end = len(queue) - head
    return result


def erlang_c_wait(arrival_rps: float, service_s: float, servers: int) -> float:
    """Mean time in queue of the M/M/c queue (Erlang C): c servers, Poisson arrivals, exponential
    service with mean service_s. Infinite when the servers cannot keep up."""
    load = arrival_rps * service_s  # offered load in Erlangs
    if load >= servers:
        return math.inf
    # P(wait) = (a^c/c! * c/(c-a)) / (sum_{k<c} a^k/k! + a^c/c! * c/(c-a)), summed stably
    term, total = 1.0, 1.0
    for k in range(1, servers):
        term *= load / k
        total += term
    last = term * load / servers * servers / (servers - load)
    p_wait = last / (total + last)
    return p_wait * service_s / (servers - load)
