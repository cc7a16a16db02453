"""`cogkit cost`: the simulation against the closed form, the issue's sanity case, the command."""

import json
import math

import pytest

from cogkit.cli import main
from cogkit.cost import (CostError, Measured, break_even, estimate, hardware_prices, measured_figures,
                         read_profile, traffic_shape, usage_price)
from cogkit.cost_sim import Fleet, erlang_c_wait, simulate


def test_steady_fleet_matches_erlang_c():
    # min = max: nothing boots or stops, so the fleet is an M/M/c queue (3 instances x 2 slots)
    fleet = Fleet(service_s=1.0, slots=2, min_instances=3, max_instances=3)
    sim = simulate(fleet, [5.0], seconds=40000, seed=7)
    expected = erlang_c_wait(5.0, 1.0, 6)  # 0.5875 s at 83% load
    assert sim.boots == 0
    assert sim.instance_seconds == pytest.approx(3 * 40000)
    assert sim.mean_wait_s == pytest.approx(expected, rel=0.12)
    assert sim.busy_slot_seconds / (6 * 40000) == pytest.approx(5.0 / 6, rel=0.03)


def test_erlang_c_closed_form_known_values():
    assert erlang_c_wait(0.5, 1.0, 1) == pytest.approx(1.0)  # M/M/1: rho/(mu - lambda) = 0.5/0.5
    assert erlang_c_wait(1.0, 1.0, 2) == pytest.approx(1 / 3)  # M/M/2 at a = 1: P(wait) 1/3, 1/(2-1)
    assert math.isinf(erlang_c_wait(2.0, 1.0, 2))


def test_scale_to_zero_boots_and_bills_boot_time():
    # one request per 10 minutes, idle timeout 60 s: almost every request is a cold start
    fleet = Fleet(service_s=2.0, slots=1, boot_s=30.0, min_instances=0, max_instances=1, idle_timeout_s=60.0)
    sim = simulate(fleet, [1 / 600] * 24, seed=3)
    assert sim.boots >= 0.8 * sim.arrivals
    assert sim.cold_waits and min(sim.cold_waits) == pytest.approx(30.0)
    # each boot bills about boot + service + idle timeout seconds
    per_boot = sim.instance_seconds / sim.boots
    assert 85 < per_boot < 110


def test_fleet_scales_out_under_load_and_back():
    fleet = Fleet(service_s=1.0, slots=1, boot_s=5.0, min_instances=0, max_instances=4, idle_timeout_s=30.0)
    busy_then_quiet = [3.0] + [0.0] * 3
    sim = simulate(fleet, busy_then_quiet, seed=1)
    assert sim.max_up == 4  # 3 requests/s need 3+ instances of 1/s
    assert sim.backlog_at_end == 0
    # after the busy hour every instance scales to zero: billed time is about one hour x ~3.x instances
    assert 3 * 3600 < sim.instance_seconds < 4 * 3600 + 4 * 60


def sanity_report(**overrides):
    # the issue's sanity case: 200 requests/min, 1.5K in / 500 out tokens, $0.40/$1.00 per million tokens
    # (= $1.10 per 1K requests), against two always-on instances at $3.95/hour
    args = dict(model="llm", hourly_rpm=[200.0] * 24, peak_rpm=200.0,
                measured=Measured(boot_s=60.0, service_s=500 / 1000, slots=1, notes=[]),
                price_per_second=3.95 / 3600, hardware="custom", min_instances=2, max_instances=2,
                idle_timeout_s=60.0, usage=usage_price("0.40/1.00", None, 1500, 500), tokens_in=1500,
                tokens_out=500, seed=0)
    args.update(overrides)
    return estimate(**args)


def test_issue_sanity_case():
    report = sanity_report()
    usage = report["usage_billing"]
    assert usage["per_1k_requests"] == pytest.approx(1.10)
    assert usage["per_hour"] == pytest.approx(13.2)  # ~$13/hour
    assert usage["per_month"] == pytest.approx(9504)  # ~$9.5K/month (720 hours)
    per_second = report["per_second_billing"]
    assert per_second["per_hour"] == pytest.approx(7.90)  # two always-on $3.95/hour instances
    assert per_second["per_month"] == pytest.approx(7.90 * 720)
    assert per_second["per_1k_requests"] == pytest.approx(7.90 / 12, rel=0.02)
    assert report["simulated"]["keeps_up"]
    assert report["instances_needed"] == {"average": 2, "peak": 2}  # 120 requests/min each
    # always-on cost is flat, usage cost linear: they meet at 7.90 / (60 x 0.0011) requests/min
    be = report["break_even"]
    assert be["rpm"] == pytest.approx(7.90 / (60 * 0.0011), rel=1e-6)
    assert (be["cheaper_below"], be["cheaper_above"]) == ("usage", "per_second")


def test_too_small_a_fleet_says_it_cannot_keep_up():
    report = sanity_report(max_instances=1, min_instances=1, curve=False)
    assert not report["simulated"]["keeps_up"]
    assert report["instances_needed"]["average"] == 2


def test_break_even_interpolates_every_crossing():
    curve = [{"rpm": 1, "per_second_billing_per_hour": 5, "usage_billing_per_hour": 1},
             {"rpm": 3, "per_second_billing_per_hour": 5, "usage_billing_per_hour": 9}]
    assert break_even(curve)["rpm"] == pytest.approx(2.0)


def test_measured_figures_from_bench_json():
    boot = {"device": "cpu", "variants": {"c_snapshot": {"ready_s": {"median": 1.7},
                                                         "prediction_s": {"median": 8.0},
                                                         "metrics_last": {"tokens_per_second": 16.0}}},
            "floor_s": {"median": 1.8}}
    serve = {"model": "llm", "levels": [{"concurrency": 1, "aggregate_tokens_per_second": 16.0},
                                        {"concurrency": 8, "aggregate_tokens_per_second": 64.0}],
             "peers": {"ct2": [{"concurrency": 8, "aggregate_tokens_per_second": 99.0}]}}  # not ours
    m = measured_figures(boot, serve, 100)
    assert (m.boot_s, m.slots, m.service_s) == (1.7, 8, pytest.approx(8 * 100 / 64))
    m = measured_figures(boot, None, 100)  # no bench serve: one request at a time at the decode speed
    assert (m.slots, m.service_s) == (1, pytest.approx(100 / 16))
    m = measured_figures(boot, serve, 100, concurrency=1, boot_s=30.0)
    assert (m.boot_s, m.slots, m.service_s) == (30.0, 1, pytest.approx(100 / 16))
    m = measured_figures(boot, None, None)  # a non-LLM model: the bench input's prediction time
    assert m.service_s == 8.0
    with pytest.raises(CostError, match="--concurrency 3"):
        measured_figures(boot, serve, 100, concurrency=3)
    with pytest.raises(CostError, match="no boot time"):
        measured_figures(None, serve, 100)


def test_traffic_and_price_inputs(tmp_path):
    profile = tmp_path / "day.txt"
    profile.write_text(" ".join(str(h + 1) for h in range(24)))
    hourly, peak = traffic_shape(100.0, read_profile(profile), None)
    assert sum(hourly) / 24 == pytest.approx(100.0) and peak == pytest.approx(24 * 100 / 12.5)
    profile.write_text("1 2 3")
    with pytest.raises(CostError, match="24 non-negative numbers"):
        read_profile(profile)
    with pytest.raises(CostError, match="IN/OUT"):
        usage_price("1.0", None, 1, 1)
    with pytest.raises(CostError, match="--tokens-in"):
        usage_price("1/2", None, None, 5)
    prices = hardware_prices()
    assert prices["as_of"] and prices["per_second"]["gpu-t4"] == pytest.approx(0.000225)


BOOT_JSON = {"model": "llm", "device": "cpu", "runs": 1,
             "variants": {"c_snapshot": {"ready_s": {"median": 1.74}, "prediction_s": {"median": 8.0},
                                         "metrics_last": {"tokens_per_second": 16.0}}},
             "floor_s": {"median": 1.8}}


def test_cost_command_prints_table_json_and_png(tmp_path, capsys):
    bench = tmp_path / "llm-boot.json"
    bench.write_text(json.dumps(BOOT_JSON))
    plot = tmp_path / "cost.png"
    common = ["cost", "llm", "--bench", str(bench), "--rpm", "2", "--tokens-in", "200", "--tokens-out", "100",
              "--hardware", "cpu", "--max", "3", "--per-token-price", "0.10/0.30"]
    assert main(common + ["--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "per second (cpu)" in out and "break-even" in out and "cold starts per day" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(plot) as image:
        image.verify()
    assert main(common + ["--json", "--no-plot"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["measured"]["boot_s"] == 1.74 and report["measured"]["slots"] == 1
    assert report["hardware"]["price_per_second"] == pytest.approx(0.0001)
    assert report["usage_billing"]["per_1k_requests"] == pytest.approx((200 * 0.10 + 100 * 0.30) / 1000)


def test_cost_command_errors_name_the_option(tmp_path, capsys):
    assert main(["cost", "llm", "--bench", str(tmp_path / "missing.json"), "--rpm", "5"]) == 2
    assert "--bench" in capsys.readouterr().err
    assert main(["cost", "llm", "--boot-s", "2", "--throughput", "10", "--tokens-out", "10", "--rpm", "5",
                 "--hardware", "gpu-nope", "--no-plot"]) == 2
    assert "--price-per-second" in capsys.readouterr().err
    assert main(["cost", "llm", "--boot-s", "2", "--throughput", "10", "--tokens-out", "10", "--rpm", "5",
                 "--min", "3", "--max", "2", "--no-plot"]) == 2
    assert "--max >= --min" in capsys.readouterr().err
    assert main(["cost", "llm", "--boot-s", "2", "--throughput", "10", "--tokens-out", "10", "--rpm", "nan",
                 "--no-plot"]) == 2
    assert "--rpm must be a finite number" in capsys.readouterr().err


def test_cost_llm_on_the_projects_own_bench_json(tmp_path, capsys):
    # bench/llm-boot.json is committed: `cogkit bench boot llm --runs 3 --skip-naive --json ...`
    plot = tmp_path / "llm.png"
    assert main(["cost", "llm", "--rpm", "2", "--tokens-in", "300", "--tokens-out", "100", "--hardware", "cpu",
                 "--max", "3", "--per-token-price", "0.05/0.10", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "bench boot, c_snapshot ready median" in out and "$/1K requests" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
