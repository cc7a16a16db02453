"""`cogkit cost MODEL`: what serving a model costs billed per second of hardware, beside a per-token
(or per-request) price, from the model's measured boot time and throughput.

Inputs: a traffic shape, a hardware price, the measured figures (`cogkit bench boot` and
`cogkit bench serve` JSON, or `--boot-s`/`--throughput`/`--seconds-per-request` by hand) and a
scaling policy. The answer comes from the simulation in `cogkit.cost_sim` (assumptions listed
there and in the README, "What it costs").
"""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cogkit.cost_sim import Fleet, SimResult, simulate

PRICES_FILE = Path(__file__).with_name("data") / "replicate_hardware_prices.json"
HOURS_PER_MONTH = 720  # 30 days
SWEEP_REQUESTS = 20000  # simulated requests per point of the cost-vs-rate curve


class CostError(ValueError):
    """A figure or option that cannot be used, said in one line."""


def hardware_prices() -> dict:
    """{"as_of": date, "source": url, "per_second": {sku: dollars}} from the dated data file."""
    data = json.loads(PRICES_FILE.read_text())
    return {"as_of": data["as_of"], "source": data["source"], "per_second": data["per_second"]}


# ---------------------------------------------------------------- measured figures


@dataclass
class Measured:
    boot_s: float
    service_s: float  # mean seconds one request holds a slot
    slots: int  # requests one instance serves at once
    notes: list = field(default_factory=list)  # where each figure came from


def read_bench(paths: list[Path]) -> tuple[dict | None, dict | None]:
    """(boot report, serve report) among the given `cogkit bench` JSON files, told apart by content."""
    boot = serve = None
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise CostError(f"--bench {path}: cannot read it as JSON ({e})") from None
        if isinstance(data, dict) and "variants" in data and "floor_s" in data:
            boot = data
        elif serve_levels(data):
            serve = data
        else:
            raise CostError(f"--bench {path}: neither `cogkit bench boot` JSON (variants, floor_s) nor "
                            "`cogkit bench serve` JSON (levels with concurrency and aggregate_tokens_per_second)")
    return boot, serve


def serve_levels(data) -> list[dict]:
    """The levels of a `cogkit bench serve` report: its `levels` list (cogkit's own; peers' levels
    live elsewhere in the report), else every object carrying `concurrency` and
    `aggregate_tokens_per_second`, wherever the report nests them."""
    if isinstance(data, dict) and isinstance(data.get("levels"), list):
        return [lv for lv in data["levels"] if isinstance(lv, dict) and isinstance(lv.get("concurrency"), int)
                and isinstance(lv.get("aggregate_tokens_per_second"), (int, float))]
    found = []
    if isinstance(data, dict):
        if isinstance(data.get("concurrency"), int) and isinstance(data.get("aggregate_tokens_per_second"), (int, float)):
            found.append(data)
        for value in data.values():
            found += serve_levels(value)
    elif isinstance(data, list):
        for value in data:
            found += serve_levels(value)
    return found


def boot_figure(boot: dict) -> tuple[float, str]:
    for variant in ("c_snapshot", "b_built"):
        if variant in boot.get("variants", {}):
            return boot["variants"][variant]["ready_s"]["median"], f"{variant} ready median"
    raise CostError("the bench boot JSON has no c_snapshot or b_built variant")


def measured_figures(boot: dict | None, serve: dict | None, tokens_out: int | None, *,
                     boot_s: float | None = None, throughput: float | None = None,
                     concurrency: int | None = None, seconds_per_request: float | None = None) -> Measured:
    """Boot time, mean slot time per request and slots per instance. Hand-given figures win over
    bench JSON. LLMs: throughput in output tokens/s of one instance at `concurrency` requests at
    once; other models: seconds per request."""
    notes = []
    if boot_s is None:
        if boot is None:
            raise CostError("no boot time: pass --boot-s SECONDS or --bench FILE from `cogkit bench boot`")
        boot_s, how = boot_figure(boot)
        notes.append(f"boot {boot_s:.2f}s: bench boot, {how} ({boot.get('device', '?')})")
    else:
        notes.append(f"boot {boot_s:.2f}s: --boot-s")
    if boot_s < 0:
        raise CostError("--boot-s must be at least 0")

    if seconds_per_request is not None or tokens_out is None:
        slots = concurrency or 1
        if seconds_per_request is None:
            if boot is None:
                raise CostError("no service time: pass --seconds-per-request S (or --tokens-out N for an LLM)")
            seconds_per_request = boot["variants"]["c_snapshot"]["prediction_s"]["median"]
            notes.append(f"{seconds_per_request:.2f}s per request: bench boot, the bench input's prediction time")
        else:
            notes.append(f"{seconds_per_request:.2f}s per request: --seconds-per-request")
        if seconds_per_request <= 0:
            raise CostError("--seconds-per-request must be more than 0")
        return Measured(boot_s, seconds_per_request, slots, notes)

    if tokens_out <= 0:
        raise CostError("--tokens-out must be at least 1")
    if throughput is not None:
        slots = concurrency or 1
        notes.append(f"{throughput:.1f} output tokens/s per instance at {slots} at once: --throughput")
    elif serve is not None:
        levels = serve_levels(serve)
        if concurrency:
            levels = [lv for lv in levels if lv["concurrency"] == concurrency]
            if not levels:
                raise CostError(f"--concurrency {concurrency}: the bench serve JSON has no such level "
                                f"(it has {sorted({lv['concurrency'] for lv in serve_levels(serve)})})")
        best = max(levels, key=lambda lv: lv["aggregate_tokens_per_second"])
        slots, throughput = best["concurrency"], float(best["aggregate_tokens_per_second"])
        notes.append(f"{throughput:.1f} output tokens/s per instance at {slots} at once: bench serve "
                     f"({'--concurrency' if concurrency else 'its fastest level'})")
    elif boot is not None and boot_decode_speed(boot):
        slots = 1
        throughput = boot_decode_speed(boot)
        notes.append(f"{throughput:.1f} output tokens/s, one request at a time: bench boot's decode speed "
                     "(no bench serve JSON)")
    else:
        raise CostError("no throughput: pass --throughput TOKENS_PER_S or --bench FILE from `cogkit bench serve`")
    if throughput <= 0:
        raise CostError("--throughput must be more than 0")
    return Measured(boot_s, slots * tokens_out / throughput, slots, notes)


def boot_decode_speed(boot: dict) -> float | None:
    speed = (boot.get("decode_tokens_per_second") or {}).get("c_snapshot")
    if speed is None:
        metrics = boot.get("variants", {}).get("c_snapshot", {}).get("metrics_last", {})
        speed = metrics.get("tokens_per_second")
    return float(speed) if speed else None


# ---------------------------------------------------------------- traffic


def read_profile(path: Path) -> list[float]:
    """24 numbers, one per hour of the day (JSON list, or separated by commas/whitespace)."""
    text = Path(path).read_text()
    try:
        values = json.loads(text)
    except ValueError:
        values = text.replace(",", " ").split()
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise CostError(f"--profile {path}: expected 24 numbers (requests per minute in each hour)") from None
    if len(values) != 24 or any(v < 0 or not math.isfinite(v) for v in values) or not any(values):
        raise CostError(f"--profile {path}: expected 24 non-negative numbers, not all 0 (got {len(values)})")
    return values


def traffic_shape(rpm: float | None, profile: list[float] | None, peak: float | None) -> tuple[list[float], float]:
    """(requests per minute for each hour of a day, peak requests per minute). A profile gives the
    shape; with --rpm too it is scaled so its mean is --rpm. Without one the day is flat at --rpm
    and --peak only sizes the fleet for the busiest minute."""
    if profile is None:
        if rpm is None or rpm <= 0:
            raise CostError("--rpm must be more than 0 (or give --profile)")
        factor = 1.0 if peak is None else peak
        if factor < 1:
            raise CostError("--peak is a factor over the average: at least 1")
        return [rpm] * 24, rpm * factor
    if rpm is not None:
        mean = sum(profile) / 24
        profile = [v * rpm / mean for v in profile]
    if peak is not None:
        raise CostError("--peak comes from --profile (its busiest hour); give one or the other")
    return profile, max(profile)


# ---------------------------------------------------------------- prices on the other side


@dataclass
class UsagePrice:
    """A price per request: from per-million-token prices and token counts, or given per request."""
    per_request: float
    how: str


def usage_price(per_token: str | None, per_request: float | None, tokens_in: int | None,
                tokens_out: int | None) -> UsagePrice | None:
    if per_token and per_request is not None:
        raise CostError("give --per-token-price or --per-request-price, not both")
    if per_request is not None:
        if per_request < 0:
            raise CostError("--per-request-price must be at least 0")
        return UsagePrice(per_request, f"${per_request:g} per request")
    if not per_token:
        return None
    try:
        price_in, price_out = (float(x) for x in per_token.split("/"))
        if not (math.isfinite(price_in) and math.isfinite(price_out)):
            raise ValueError
    except ValueError:
        raise CostError(f"--per-token-price {per_token!r}: expected IN/OUT dollars per million tokens, "
                        "e.g. 0.40/1.00") from None
    if price_in < 0 or price_out < 0:
        raise CostError("--per-token-price: prices must be at least 0")
    if tokens_in is None or tokens_out is None:
        raise CostError("--per-token-price needs --tokens-in and --tokens-out")
    cost = (tokens_in * price_in + tokens_out * price_out) / 1e6
    return UsagePrice(cost, f"${price_in:g}/${price_out:g} per million input/output tokens")


# ---------------------------------------------------------------- the estimate


def billed(sim: SimResult, price_per_second: float) -> dict:
    per_hour = sim.instance_seconds / sim.seconds * 3600 * price_per_second
    return {"per_hour": per_hour, "per_month": per_hour * HOURS_PER_MONTH,
            "per_1k_requests": per_hour / (sim.arrivals / sim.seconds * 3600) * 1000 if sim.arrivals else None}


def instances_for(rpm: float, fleet: Fleet) -> int:
    """Instances whose capacity covers `rpm` (the fewest that keep up; waits grow as it nears 100%)."""
    return max(1, math.ceil(rpm / 60 / fleet.capacity_rps - 1e-9))


def sweep_rates(rpm: float) -> list[float]:
    """Requests per minute for the cost curve: 1% to 10x the average, evenly on a log scale."""
    points = 25
    low, high = rpm / 100, rpm * 10
    return [low * (high / low) ** (i / (points - 1)) for i in range(points)]


def cost_curve(fleet: Fleet, price_per_second: float, usage: UsagePrice | None, rpm: float, seed: int) -> list[dict]:
    """Per-second billing $/hour at steady (flat) traffic over a range of rates, beside usage billing."""
    curve = []
    for rate in sweep_rates(rpm):
        rps = rate / 60
        seconds = min(86400.0, max(7200.0, SWEEP_REQUESTS / rps))
        sim = simulate(fleet, [rps], seconds=seconds, seed=seed)
        point = {"rpm": rate, "per_second_billing_per_hour": billed(sim, price_per_second)["per_hour"],
                 "keeps_up": keeps_up(sim, fleet)}
        if usage:
            point["usage_billing_per_hour"] = rate * 60 * usage.per_request
        curve.append(point)
    return curve


def keeps_up(sim: SimResult, fleet: Fleet) -> bool:
    """False when requests pile up: more left waiting at the end than the fleet serves in a minute."""
    return sim.backlog_at_end <= max(1.0, fleet.max_instances * fleet.capacity_rps * 60)


def break_even(curve: list[dict]) -> dict:
    """Where per-second billing and usage billing cost the same, interpolated between curve points."""
    crossings = []
    for a, b in zip(curve, curve[1:]):
        da = a["per_second_billing_per_hour"] - a["usage_billing_per_hour"]
        db = b["per_second_billing_per_hour"] - b["usage_billing_per_hour"]
        if da == 0:
            crossings.append(a["rpm"])
        elif da * db < 0:
            crossings.append(a["rpm"] + (b["rpm"] - a["rpm"]) * da / (da - db))
    first, last = curve[0], curve[-1]
    cheaper = lambda p: "per_second" if p["per_second_billing_per_hour"] < p["usage_billing_per_hour"] else "usage"  # noqa: E731
    return {"rpm": crossings[0] if crossings else None, "all_rpm": crossings,
            "cheaper_below": cheaper(first), "cheaper_above": cheaper(last)}


def estimate(*, model: str, hourly_rpm: list[float], peak_rpm: float, measured: Measured, price_per_second: float,
             hardware: str, min_instances: int, max_instances: int, idle_timeout_s: float,
             usage: UsagePrice | None, tokens_in: int | None, tokens_out: int | None, seed: int = 0,
             curve: bool = True) -> dict:
    if min_instances < 0 or max_instances < 1 or max_instances < min_instances:
        raise CostError("--min must be >= 0, --max >= 1 and --max >= --min")
    if idle_timeout_s < 0:
        raise CostError("--idle-timeout must be at least 0")
    fleet = Fleet(service_s=measured.service_s, slots=measured.slots, boot_s=measured.boot_s,
                  min_instances=min_instances, max_instances=max_instances, idle_timeout_s=idle_timeout_s)
    sim = simulate(fleet, [r / 60 for r in hourly_rpm], seed=seed)
    mean_rpm = sum(hourly_rpm) / len(hourly_rpm)
    days = sim.seconds / 86400
    report = {
        "model": model,
        "traffic": {"mean_rpm": mean_rpm, "peak_rpm": peak_rpm, "hourly_rpm": hourly_rpm,
                    "tokens_in": tokens_in, "tokens_out": tokens_out},
        "hardware": {"sku": hardware, "price_per_second": price_per_second},
        "measured": {**asdict(measured), "capacity_rpm_per_instance": fleet.capacity_rps * 60},
        "policy": {"min_instances": min_instances, "max_instances": max_instances,
                   "idle_timeout_s": idle_timeout_s},
        "instances_needed": {"average": instances_for(mean_rpm, fleet), "peak": instances_for(peak_rpm, fleet)},
        "simulated": {
            "hours": sim.seconds / 3600, "requests": sim.arrivals, "served": sim.served,
            "mean_instances_up": sim.mean_instances, "max_instances_up": sim.max_up,
            "utilization": sim.busy_slot_seconds / (sim.instance_seconds * fleet.slots) if sim.instance_seconds else 0.0,
            "cold_starts_per_day": sim.boots / days,
            "cold_start_wait_s": {"mean": sum(sim.cold_waits) / len(sim.cold_waits) if sim.cold_waits else 0.0,
                                  "max": max(sim.cold_waits, default=0.0),
                                  "requests_per_day": len(sim.cold_waits) / days},
            "wait_s": {"mean": sim.mean_wait_s, "p50": sim.wait_quantile(0.5), "p95": sim.wait_quantile(0.95),
                       "p99": sim.wait_quantile(0.99)},
            "keeps_up": keeps_up(sim, fleet), "backlog_at_end": sim.backlog_at_end,
        },
        "per_second_billing": billed(sim, price_per_second),
    }
    per_1k = report["per_second_billing"]["per_1k_requests"]
    if tokens_out and per_1k is not None:
        # the same money as a price per million output tokens, to hold against per-token offers
        report["per_second_billing"]["per_million_output_tokens"] = per_1k / 1000 / tokens_out * 1e6
    if usage:
        per_hour = mean_rpm * 60 * usage.per_request
        report["usage_billing"] = {"price": usage.how, "per_request": usage.per_request,
                                   "per_1k_requests": usage.per_request * 1000, "per_hour": per_hour,
                                   "per_month": per_hour * HOURS_PER_MONTH}
    if curve:
        points = cost_curve(fleet, price_per_second, usage, mean_rpm, seed)
        report["curve"] = points
        if usage:
            report["break_even"] = break_even(points)
    return report


# ---------------------------------------------------------------- output


def money(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"${x:,.0f}"
    return f"${x:,.2f}" if x >= 1 else f"${x:.4f}"


def print_report(report: dict, console) -> None:
    from rich.table import Table

    sim, policy, m = report["simulated"], report["policy"], report["measured"]
    hw = report["hardware"]
    console.print(f"[bold]{report['model']}[/bold] on {hw['sku']} (${hw['price_per_second']:.6f}/s), "
                  f"{report['traffic']['mean_rpm']:.1f} requests/min on average, peak {report['traffic']['peak_rpm']:.1f}; "
                  f"instances {policy['min_instances']}-{policy['max_instances']}, "
                  f"scale down after {policy['idle_timeout_s']:g}s idle")
    for note in m["notes"]:
        console.print(f"  [dim]{note}[/dim]")
    console.print(f"  [dim]one instance: {m['slots']} at once, {m['service_s']:.2f}s each → "
                  f"{m['capacity_rpm_per_instance']:.1f} requests/min[/dim]")
    need = report["instances_needed"]
    table = Table(title="simulated day", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("instances needed at average / peak", f"{need['average']} / {need['peak']}")
    table.add_row("instances up (mean / max)", f"{sim['mean_instances_up']:.2f} / {sim['max_instances_up']}")
    table.add_row("utilization of billed time", f"{sim['utilization']:.0%}")
    table.add_row("cold starts per day", f"{sim['cold_starts_per_day']:.1f}")
    cold = sim["cold_start_wait_s"]
    table.add_row("requests waiting on a cold start per day (mean / max wait)",
                  f"{cold['requests_per_day']:.1f} ({cold['mean']:.1f}s / {cold['max']:.1f}s)")
    table.add_row("queue wait p50 / p95 / p99", "{p50:.2f}s / {p95:.2f}s / {p99:.2f}s".format(**sim["wait_s"]))
    console.print(table)
    if not sim["keeps_up"]:
        console.print(f"[bold red]the fleet cannot keep up: {sim['backlog_at_end']} requests still waiting at the "
                      f"end of the day; raise --max[/bold red]")
    costs = Table(title="cost", show_header=True)
    for col in ("billing", "$/1K requests", "$/hour", "$/month (720 h)"):
        costs.add_column(col, justify="right" if col != "billing" else "left")
    ps = report["per_second_billing"]
    costs.add_row(f"per second ({hw['sku']})", money(ps["per_1k_requests"]), money(ps["per_hour"]), money(ps["per_month"]))
    if "usage_billing" in report:
        u = report["usage_billing"]
        costs.add_row(f"usage ({u['price']})", money(u["per_1k_requests"]), money(u["per_hour"]), money(u["per_month"]))
    console.print(costs)
    if "per_million_output_tokens" in ps:
        console.print(f"per-second billing at this traffic = {money(ps['per_million_output_tokens'])} per million "
                      "output tokens")
    if "break_even" in report:
        be = report["break_even"]
        if be["rpm"] is not None:
            console.print(f"break-even: {be['rpm']:.1f} requests/min (steady traffic); per-second billing is "
                          f"cheaper {'above' if be['cheaper_above'] == 'per_second' else 'below'} it")
        else:
            side = "per-second" if be["cheaper_below"] == "per_second" else "usage"
            console.print(f"no break-even between {report['curve'][0]['rpm']:.2f} and "
                          f"{report['curve'][-1]['rpm']:.0f} requests/min: {side} billing is cheaper throughout")


def write_plot(report: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise CostError("the plot needs matplotlib (pinned in requirements-dev.txt: bash scripts/setup.sh), "
                        "or pass --no-plot") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = report["curve"]
    rates = [p["rpm"] for p in curve]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    hw = report["hardware"]["sku"]
    policy = report["policy"]
    ax.plot(rates, [p["per_second_billing_per_hour"] for p in curve], marker=".",
            label=f"per second on {hw} ({policy['min_instances']}-{policy['max_instances']} instances)")
    over = [p for p in curve if not p["keeps_up"]]
    if over:
        ax.scatter([p["rpm"] for p in over], [p["per_second_billing_per_hour"] for p in over], color="red",
                   zorder=3, label="cannot keep up (queue grows)")
    if "usage_billing" in report:
        ax.plot(rates, [p["usage_billing_per_hour"] for p in curve], label=f"usage: {report['usage_billing']['price']}")
        be = report["break_even"]
        if be["rpm"] is not None:
            ax.axvline(be["rpm"], color="gray", linestyle="--")
            low, high = ax.get_ylim()
            ax.annotate(f"break-even {be['rpm']:.1f}/min", (be["rpm"], math.sqrt(low * high)),
                        rotation=90, va="center", ha="right", color="gray")
    ax.axvline(report["traffic"]["mean_rpm"], color="green", linestyle=":", label="your average rate")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("requests per minute (steady)")
    ax.set_ylabel("$ per hour")
    ax.set_title(f"{report['model']}: cost against request rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)


# ---------------------------------------------------------------- command


def default_bench_files(model: str) -> list[Path]:
    """The project's own measurements: bench/MODEL-boot.json and bench/MODEL-serve.json."""
    from cogkit.weights import project_root

    folder = project_root() / "bench"
    return [p for p in (folder / f"{model}-boot.json", folder / f"{model}-serve.json") if p.is_file()]


def add_commands(sub, model_help: str) -> None:
    p = sub.add_parser("cost", help="what serving a model costs: per-second billing vs per-token, from measured figures",
                       description="Simulates a day of the traffic on a scaled fleet of the model and prices it "
                                   "per second of hardware, beside a per-token or per-request price.")
    p.add_argument("model", help=model_help)
    t = p.add_argument_group("traffic")
    t.add_argument("--rpm", type=float, help="average requests per minute")
    t.add_argument("--peak", type=float, help="peak over average (sizes the fleet; the simulated day stays flat)")
    t.add_argument("--profile", type=Path, help="24 numbers: requests per minute in each hour (scaled to --rpm if given)")
    t.add_argument("--tokens-in", type=int, help="input tokens per request (LLMs)")
    t.add_argument("--tokens-out", type=int, help="output tokens per request (LLMs)")
    t.add_argument("--seconds-per-request", type=float, help="seconds one request takes (non-LLM models)")
    h = p.add_argument_group("hardware")
    h.add_argument("--hardware", help="a Replicate SKU with a published price (default: the model's)")
    h.add_argument("--price-per-second", type=float, help="dollars per second of an instance (other hardware)")
    f = p.add_argument_group("measured figures (default: bench/MODEL-boot.json and bench/MODEL-serve.json)")
    f.add_argument("--bench", type=Path, action="append", default=None, help="`cogkit bench boot|serve` JSON")
    f.add_argument("--boot-s", type=float, help="seconds from scale-up to serving")
    f.add_argument("--throughput", type=float, help="output tokens/s of one instance (LLMs)")
    f.add_argument("--concurrency", type=int, help="requests one instance serves at once (default: the bench "
                                                   "serve level with the highest throughput, else 1)")
    s = p.add_argument_group("scaling")
    s.add_argument("--min", dest="min_instances", type=int, default=0, help="instances always up (default 0)")
    s.add_argument("--max", dest="max_instances", type=int, default=1, help="most instances (default 1)")
    s.add_argument("--idle-timeout", type=float, default=60.0, help="seconds idle before an instance is shut down")
    u = p.add_argument_group("usage billing to compare with")
    u.add_argument("--per-token-price", metavar="IN/OUT", help="dollars per million input/output tokens")
    u.add_argument("--per-request-price", type=float, help="dollars per request")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the estimate as one JSON object on stdout")
    o.add_argument("--plot", type=Path, help="PNG of cost against request rate (default cost-MODEL.png)")
    o.add_argument("--no-plot", action="store_true")
    o.add_argument("--seed", type=int, default=0, help="random seed of the simulation")
    p.set_defaults(func=cmd_cost)


def cmd_cost(args) -> int:
    from rich.console import Console

    from cogkit.cli import UsageError
    from models import get_model

    spec = get_model(args.model)
    try:
        for option in ("rpm", "peak", "seconds_per_request", "price_per_second", "boot_s", "throughput",
                       "idle_timeout", "per_request_price"):
            value = getattr(args, option)
            if value is not None and not math.isfinite(value):
                raise CostError(f"--{option.replace('_', '-')} must be a finite number, not {value}")
        if args.concurrency is not None and args.concurrency < 1:
            raise CostError("--concurrency must be at least 1")
        prices = hardware_prices()
        hardware = args.hardware or spec.hardware
        if args.price_per_second is not None:
            if args.price_per_second <= 0:
                raise CostError("--price-per-second must be more than 0")
            price, hardware = args.price_per_second, args.hardware or "custom"
        elif hardware in prices["per_second"]:
            price = prices["per_second"][hardware]
        else:
            raise CostError(f"--hardware {hardware!r} has no published price in {PRICES_FILE.name} "
                            f"({', '.join(prices['per_second'])}); pass --price-per-second")
        bench_files = args.bench if args.bench is not None else default_bench_files(spec.name)
        boot, serve = read_bench(bench_files)
        measured = measured_figures(boot, serve, args.tokens_out, boot_s=args.boot_s, throughput=args.throughput,
                                    concurrency=args.concurrency, seconds_per_request=args.seconds_per_request)
        if boot and boot.get("device") == "cpu" and hardware.startswith("gpu"):
            measured.notes.append(f"note: measured on CPU, priced as {hardware}: measure on that GPU for a real answer")
        profile = read_profile(args.profile) if args.profile else None
        hourly, peak = traffic_shape(args.rpm, profile, args.peak)
        usage = usage_price(args.per_token_price, args.per_request_price, args.tokens_in, args.tokens_out)
        want_plot = not args.no_plot
        report = estimate(model=spec.name, hourly_rpm=hourly, peak_rpm=peak, measured=measured,
                          price_per_second=price, hardware=hardware, min_instances=args.min_instances,
                          max_instances=args.max_instances, idle_timeout_s=args.idle_timeout, usage=usage,
                          tokens_in=args.tokens_in, tokens_out=args.tokens_out, seed=args.seed, curve=True)
        report["hardware"]["prices_as_of"] = prices["as_of"] if args.price_per_second is None else None
        report["measured"]["bench_files"] = [str(p) for p in bench_files]
        if want_plot:
            plot = args.plot or Path(f"cost-{spec.name}.png")
            write_plot(report, plot)
            report["plot"] = str(plot)
    except CostError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        console = Console(soft_wrap=True, highlight=False)
        print_report(report, console)
        if want_plot:
            console.print(f"plot: {report['plot']}")
    return 0
