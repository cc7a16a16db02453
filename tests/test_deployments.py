"""Deployments on the gateway with the official `replicate` client, `cogkit deploy` and
`cogkit call --deployment`: a real gateway process, real coglet servers, the tiny LLM."""

import json
from pathlib import Path

import jsonschema
import pytest
from replicate.exceptions import ReplicateError

from cogkit.cli import main
from cogkit.gateway.core import allow_nulls
from cogkit.gateway.deployments import LIMITS
from tests.fixtures_gateway import GatewayProcess
from tests.test_gateway import wait_until

# the tiny model samples ~1700 tokens with this seed before it stops: seconds of work to overlap
BUSY = {"prompt": "Tell me a long story", "max_new_tokens": 1500, "temperature": 5.0, "top_k": 0, "top_p": 1.0,
        "seed": 26}


@pytest.fixture(scope="module")
def gw(tmp_path_factory, gateway_weights_root):
    gateway = GatewayProcess(tmp_path_factory.mktemp("deployments") / "data", gateway_weights_root, None,
                             models="llm").start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def client(gw):
    return gw.client()


@pytest.fixture(scope="module")
def version(client):
    return client.models.get("local/llm").latest_version.id


# Replicate's OpenAPI spec, the parts about deployments (vendored from the spec)
SPEC = json.loads((Path(__file__).parent / "replicate_deployments_openapi.json").read_text())


def all_properties(schema: dict) -> dict:
    """The schema with every listed property required, recursively: the gateway sends them all."""
    schema = dict(schema)
    if "properties" in schema:
        schema["required"] = list(schema["properties"])
        schema["properties"] = {k: all_properties(v) for k, v in schema["properties"].items()}
    return schema


def check_deployment_shape(data: dict) -> None:
    # created_by's avatar_url/github_url are optional: a local account has neither
    schema = all_properties(SPEC["deployment_response"])
    created_by = schema["properties"]["current_release"]["properties"]["created_by"]
    created_by["required"] = SPEC["deployment_response"]["properties"]["current_release"]["properties"][
        "created_by"]["required"]
    jsonschema.validate(data, schema)


def canceled(*predictions) -> None:
    try:
        wait_until(lambda: all(p.reload() or p.status == "canceled" for p in predictions), timeout=60,
                   what="the predictions to be canceled")
    except AssertionError:
        raise AssertionError(f"not canceled: {[(p.id, p.status, p.error) for p in predictions]}") from None


def pool(gw, name: str) -> dict:
    return {d["deployment"]: d for d in gw.get("/v1/gateway/workers").json()["deployments"]}[f"local/{name}"]


def test_gateway_bounds_are_replicates():
    for key, (low, high) in LIMITS.items():
        spec = SPEC["deployments_create_request"]["properties"][key]
        assert (spec["minimum"], spec["maximum"]) == (low, high)
        assert SPEC["deployments_update_request"]["properties"][key]["maximum"] == high
    assert set(SPEC["deployments_create_request"]["required"]) == {
        "name", "model", "version", "hardware", "min_instances", "max_instances"}


def test_client_creates_reads_updates_lists_and_deletes(gw, client, version):
    created = client.deployments.create(name="crud", model="local/llm", version=version, hardware="cpu",
                                        min_instances=0, max_instances=1)
    assert (created.owner, created.name) == ("local", "crud")
    release = created.current_release
    assert (release.number, release.model, release.version) == (1, "local/llm", version)
    assert (release.configuration.hardware, release.configuration.min_instances,
            release.configuration.max_instances) == ("cpu", 0, 1)

    check_deployment_shape(gw.get("/v1/deployments/local/crud").json())
    listed = gw.get("/v1/deployments").json()
    assert set(listed) == {"next", "previous", "results"}
    for item in listed["results"]:
        check_deployment_shape(item)

    got = client.deployments.get("local/crud")
    assert got.current_release.version == version and got.current_release.number == 1

    updated = client.deployments.update("local", "crud", hardware="gpu-t4", max_instances=3)
    conf = updated.current_release.configuration
    assert updated.current_release.number == 2
    assert (conf.hardware, conf.min_instances, conf.max_instances) == ("gpu-t4", 0, 3)
    assert client.deployments.get("local/crud").current_release.configuration.max_instances == 3

    assert "crud" in [d.name for d in client.deployments.list().results]
    assert client.deployments.delete("local", "crud") is True
    with pytest.raises(ReplicateError) as e:
        client.deployments.get("local/crud")
    assert e.value.status == 404


@pytest.mark.parametrize("body, field", [
    ({"max_instances": 21}, "max_instances"),
    ({"min_instances": 3, "max_instances": 2}, "min_instances"),
    ({"hardware": "gpu-nope"}, "hardware"),
    ({"version": "0" * 64}, "version"),
    ({"model": "local/nosuch"}, "local/nosuch"),
    ({"name": "Bad Name"}, "name"),
])
def test_bad_deployments_are_refused_naming_the_field(client, version, body, field):
    params = {"name": "bad", "model": "local/llm", "version": version, "hardware": "cpu",
              "min_instances": 0, "max_instances": 1, **body}
    with pytest.raises(ReplicateError) as e:
        client.deployments.create(**params)
    assert e.value.status in (404, 422) and field in e.value.detail


def test_max_instances_two_runs_two_predictions_at_once(gw, client, version):
    client.deployments.create(name="pair", model="local/llm", version=version, hardware="cpu",
                              min_instances=2, max_instances=2)
    # min_instances 2: the gateway boots both servers before any prediction arrives
    wait_until(lambda: sum(i["ready"] for i in pool(gw, "pair")["instances"]) == 2, timeout=120,
               what="two ready servers")
    first = client.deployments.predictions.create("local/pair", input=BUSY)
    second = client.deployments.predictions.create("local/pair", input=BUSY)

    def both_processing():
        first.reload()
        second.reload()
        return first.status == second.status == "processing"
    wait_until(both_processing, timeout=60, what="both predictions to run at the same time")
    instances = pool(gw, "pair")["instances"]
    assert sorted(p for i in instances for p in i["assigned"]) == sorted([first.id, second.id])
    assert len({i["pid"] for i in instances}) == 2  # two model servers, one prediction each
    for prediction in (first, second):
        prediction.cancel()
    canceled(first, second)
    record = gw.get(f"/v1/predictions/{first.id}").json()
    assert record["deployment"] == "local/pair"
    jsonschema.validate(record, allow_nulls(SPEC["prediction_response"]))

    # max_instances 1: the extra server stops and both predictions go to the one left; with the
    # model's concurrency 1 the second waits for the first
    client.deployments.update("local", "pair", min_instances=1, max_instances=1)
    wait_until(lambda: len(pool(gw, "pair")["instances"]) == 1, timeout=60, what="the pool to shrink")
    first = client.deployments.predictions.create("local/pair", input=BUSY)
    second = client.deployments.predictions.create("local/pair", input=BUSY)
    wait_until(lambda: first.reload() or first.status == "processing", timeout=60, what="the first to start")
    (instance,) = pool(gw, "pair")["instances"]
    if instance["concurrency"] == 1:
        second.reload()
        assert second.status == "starting" and pool(gw, "pair")["queued"] == 1
    else:
        wait_until(lambda: set(pool(gw, "pair")["instances"][0]["assigned"]) == {first.id, second.id},
                   timeout=30, what="both predictions on the one server")
    for prediction in (first, second):
        prediction.cancel()
    canceled(first, second)


def test_cogkit_deploy_and_call_through_the_deployment(gw, client, version, tmp_path, monkeypatch, capsys):
    # a project whose lock says llm was pushed as local/llm at the gateway's version
    locks = tmp_path / "models" / "locks"
    locks.mkdir(parents=True)
    (locks / "llm.schema.json").write_text(json.dumps({"model": "llm", "image": "r8.im/local/llm",
                                                       "version": version, "schema": {}}))
    monkeypatch.setenv("COGKIT_SHIP_ROOT", str(tmp_path))
    for key, value in gw.client_env().items():
        monkeypatch.setenv(key, value)

    assert main(["deploy", "llm", "--owner", "local", "--name", "chat", "--hardware", "cpu",
                 "--max-instances", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "created deployment local/chat" in err
    assert json.loads(out)["current_release"]["configuration"]["max_instances"] == 1
    assert main(["deploy", "llm", "--owner", "local", "--name", "chat", "--hardware", "cpu",
                 "--max-instances", "2"]) == 0
    assert "updated deployment local/chat" in capsys.readouterr().err
    assert client.deployments.get("local/chat").current_release.number == 2

    assert main(["call", "--deployment", "local/chat", "-i", "prompt=Hi", "-i", "max_new_tokens=4",
                 "-i", "seed=3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "succeeded" and result["deployment"] == "local/chat"
    assert result["model"] == "local/llm" and result["version"] == version
    assert "".join(result["output"]) == "".join(
        client.run("local/llm", input={"prompt": "Hi", "max_new_tokens": 4, "seed": 3}))

    assert main(["deploy", "llm", "--owner", "local", "--max-instances", "21"]) == 2
    assert "--max-instances must be from 0 to 20" in capsys.readouterr().err
    monkeypatch.setenv("COGKIT_SHIP_ROOT", str(tmp_path / "nowhere"))
    assert main(["deploy", "llm", "--owner", "local"]) == 2
    assert "has not been pushed" in capsys.readouterr().err


def test_deployments_come_back_after_a_restart(gw, client):
    before = {d.name: d.current_release.dict() for d in client.deployments.list().results}
    assert "pair" in before and "chat" in before
    gw.stop()
    gw.start()
    after = {d.name: d.current_release.dict() for d in gw.client().deployments.list().results}
    assert after == before
    # `pair` keeps min_instances 1: its server boots again without a prediction
    wait_until(lambda: sum(i["ready"] for i in pool(gw, "pair")["instances"]) == 1, timeout=120,
               what="the pair deployment's server to come back")
