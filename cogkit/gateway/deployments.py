"""Replicate's deployments on the gateway: `/v1/deployments…` and predictions through a deployment.

A deployment pins a model version with a scaling configuration. Here `max_instances` is how many
coglet servers of the model the deployment may run at once
(each serving as many predictions at once as the model's own server does: its `concurrency.max`),
and `min_instances` how many it keeps up while idle. Each deployment has its own pool of servers,
separate from the one server that `/v1/models/local/NAME/predictions` uses, as deployments on
Replicate have their own instances. Deployments persist in DATA/deployments.json.
"""

import collections
import json
import logging
import os
import queue
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cogkit.gateway.core import Gateway, GatewayError, now_iso
from cogkit.gateway.files import OWNER
from cogkit.gateway.workers import Job, ModelWorker
from cogkit.server import ServerError

log = logging.getLogger("cogkit.gateway")

IDLE_TIMEOUT = float(os.environ.get("COGKIT_DEPLOYMENT_IDLE_TIMEOUT", "300"))  # s before scale-down
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
# Replicate's bounds (OpenAPI: deployments.create)
LIMITS = {"min_instances": (0, 5), "max_instances": (0, 20)}


def published_hardware() -> list[str]:
    path = Path(__file__).resolve().parent.parent / "data" / "replicate_hardware_prices.json"
    return list(json.loads(path.read_text())["per_second"])


# ---------------------------------------------------------------- a pool of model servers


@dataclass
class Instance:
    worker: ModelWorker
    ready: bool = False
    assigned: set = field(default_factory=set)  # prediction ids handed to it and not yet finished
    idle_since: float = field(default_factory=time.monotonic)
    retired: threading.Event = field(default_factory=threading.Event)  # set when the pool drops it

    def retire(self) -> None:
        try:
            self.worker.stop()
        finally:
            self.retired.set()  # ends the thread that started its server (see DeploymentPool._warm)


class _PoolSink:
    """The gateway as the workers' sink, plus a nudge to the pool when a prediction ends."""

    def __init__(self, gateway: Gateway, pool: "DeploymentPool"):
        self._gateway, self._pool = gateway, pool

    def __getattr__(self, name):
        return getattr(self._gateway, name)

    def on_done(self, pid: str, result: dict) -> None:
        self._gateway.on_done(pid, result)
        self._pool.wake()


class DeploymentPool:
    """Between min_instances and max_instances coglet servers of one model, fed from one queue.

    A prediction waits in `jobs` until a ready server is free. When more predictions wait than the
    servers already booting will take, one more server boots (up to max_instances); a server idle
    for IDLE_TIMEOUT stops, down to min_instances. This is the policy `cogkit cost` simulates."""

    def __init__(self, key: str, model: str, runner: str, gateway: Gateway, min_instances: int,
                 max_instances: int, setup_timeout: float = 900, env: dict | None = None, concurrency: int = 1):
        self.key, self.model, self.runner = key, model, runner
        self.concurrency = concurrency  # predictions one server runs at once (the model's own)
        self.gateway = gateway
        self.sink = _PoolSink(gateway, self)
        self.setup_timeout, self.env = setup_timeout, env
        self.min_instances, self.max_instances = min_instances, max_instances
        self.jobs: "queue.Queue[Job]" = queue.Queue()
        self.instances: list[Instance] = []
        self.boots = 0
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name=f"deployment-{key}", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------ called from the gateway

    def submit(self, prediction_id: str, inputs: dict) -> None:
        self.jobs.put(Job(prediction_id, inputs))
        self.wake()

    def configure(self, min_instances: int, max_instances: int) -> None:
        with self.cond:
            self.min_instances, self.max_instances = min_instances, max_instances
            self.cond.notify_all()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def cancel_running(self, prediction_id: str) -> bool:
        with self.cond:
            holders = [i for i in self.instances if prediction_id in i.assigned]
        return bool(holders) and holders[0].worker.cancel_running(prediction_id)

    def busy(self) -> bool:
        with self.cond:
            self._prune()
            return self.jobs.qsize() > 0 or any(i.assigned for i in self.instances)

    def info(self) -> dict:
        with self.cond:
            instances = [{**i.worker.info(), "ready": i.ready, "assigned": sorted(i.assigned)}
                         for i in self.instances]
        return {"deployment": self.key, "model": self.model, "min_instances": self.min_instances,
                "max_instances": self.max_instances, "queued": self.jobs.qsize(), "boots": self.boots,
                "instances": instances}

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            instances, self.instances = list(self.instances), []
            self.cond.notify_all()
        for instance in instances:
            instance.retire()
        self.thread.join(timeout=15)

    # ------------------------------------------------------------ the pool's thread

    def _loop(self) -> None:
        while True:
            with self.cond:
                if self.stopping:
                    return
                self._prune()
                self._dispatch()
                self._scale()
                # woken by submit/finish/boot; the timeout catches cancellations and idle timers
                self.cond.wait(timeout=0.5)

    def _prune(self) -> None:
        """Forget predictions that ended (finished, canceled, failed) on each instance."""
        for instance in self.instances:
            done = {pid for pid in instance.assigned if self.gateway.is_canceled(pid)}
            if done:
                instance.assigned -= done
                if not instance.assigned:
                    instance.idle_since = time.monotonic()

    def _dispatch(self) -> None:
        """Queued predictions to the least busy ready server with a free slot, oldest first."""
        while True:
            free = [i for i in self.instances if i.ready and len(i.assigned) < self.concurrency]
            if not free:
                return
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if self.gateway.is_canceled(job.prediction_id):
                continue  # canceled or aborted while queued
            instance = min(free, key=lambda i: len(i.assigned))
            instance.assigned.add(job.prediction_id)
            instance.worker.submit(job.prediction_id, job.inputs)

    def _scale(self) -> None:
        booting = sum(self.concurrency for i in self.instances if not i.ready)  # predictions they will take
        while len(self.instances) < self.max_instances and (
                self.jobs.qsize() > booting or len(self.instances) < self.min_instances):
            self._boot()
            booting += self.concurrency
        now = time.monotonic()
        for instance in list(self.instances):
            too_many = len(self.instances) > self.max_instances  # max_instances was lowered
            if not too_many and len(self.instances) <= self.min_instances:
                break
            idle_for = now - instance.idle_since
            if instance.ready and not instance.assigned and (too_many or idle_for >= IDLE_TIMEOUT):
                self.instances.remove(instance)
                log.info("deployment %s: stopping an idle %s server (%d left)", self.key, self.model,
                         len(self.instances))
                threading.Thread(target=instance.retire, daemon=True).start()

    def _boot(self) -> None:
        worker = ModelWorker(self.model, self.runner, self.sink, env=self.env, setup_timeout=self.setup_timeout,
                             concurrency=self.concurrency)
        instance = Instance(worker)
        self.instances.append(instance)
        self.boots += 1
        log.info("deployment %s: starting %s server %d of at most %d", self.key, self.model,
                 len(self.instances), self.max_instances)
        threading.Thread(target=self._warm, args=(instance,), daemon=True).start()

    def _warm(self, instance: Instance) -> None:
        # The worker's threads have no job yet, so starting its server from here cannot race them;
        # the pool hands it predictions only once the server is READY. This thread then lives as
        # long as the instance: model servers die with the thread that started them
        # (cogkit.lifeline's PR_SET_PDEATHSIG is tied to the starting thread, not the process).
        try:
            instance.worker._ensure_server()
        except (ServerError, OSError) as e:
            log.warning("deployment %s: a %s server failed to start: %s", self.key, self.model, e)
            if self.stopping:
                return
            with self.cond:
                if instance in self.instances:
                    self.instances.remove(instance)
                try:  # the prediction that asked for this server fails, as on the model's own worker
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    job = None
            instance.retire()
            if job:
                self.gateway.on_done(job.prediction_id, {
                    "status": "failed", "error": f"the {self.model} model failed to start: {e}"})
            self.wake()
            return
        with self.cond:
            instance.ready = True
            instance.idle_since = time.monotonic()
            self.cond.notify_all()
        instance.retired.wait()


# ---------------------------------------------------------------- the deployments themselves


class Deployments:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.path = gateway.data_dir / "deployments.json"
        self.lock = threading.Lock()
        self.items: dict[str, dict] = collections.OrderedDict()
        if self.path.is_file():
            for item in json.loads(self.path.read_text()):
                self.items[f"{item['owner']}/{item['name']}"] = item
        for key, item in self.items.items():
            self._start_pool(key, item)

    def _start_pool(self, key: str, item: dict) -> None:
        release = item["current_release"]
        config = release["configuration"]
        model = release["model"].split("/", 1)[1]
        entry = self.gateway.models.get(model)
        if entry is None:
            log.warning("deployment %s: model %s is not served by this gateway; it stays offline", key, model)
            return
        self.gateway.pools[key] = DeploymentPool(key, model, entry.runner, self.gateway, config["min_instances"],
                                                 config["max_instances"], self.gateway.setup_timeout,
                                                 self.gateway.worker_env, entry.concurrency)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".deployments-")
        with os.fdopen(fd, "w") as f:
            json.dump(list(self.items.values()), f, indent=2)
        os.replace(tmp, self.path)

    def get(self, owner: str, name: str) -> dict:
        item = self.items.get(f"{owner}/{name}")
        if item is None:
            raise GatewayError(404, "Deployment not found", f"deployment {owner}/{name} does not exist")
        return item

    def list(self) -> list[dict]:
        return list(reversed(self.items.values()))  # newest first, as Replicate lists them

    def create(self, body: dict) -> dict:
        check_fields(body, required=("name", "model", "version", "hardware", "min_instances", "max_instances"))
        name = body["name"]
        if not isinstance(name, str) or not NAME.match(name):
            raise GatewayError(422, "Invalid deployment", "name: lowercase letters, digits, '-', '_' and '.', "
                                                          "starting with a letter or digit (at most 100)")
        entry = self._model_version(body["model"], body["version"])
        config = check_config(body)
        key = f"{OWNER}/{name}"
        with self.lock:
            if key in self.items:
                raise GatewayError(409, "Deployment exists", f"deployment {key} already exists; update it with "
                                                             f"PATCH /v1/deployments/{key}")
            item = {"owner": OWNER, "name": name,
                    "current_release": release(1, entry.full_name, entry.version_id, config)}
            self.items[key] = item
            self._save()
            self._start_pool(key, item)
        return item

    def update(self, owner: str, name: str, body: dict) -> dict:
        item = self.get(owner, name)
        check_fields(body, required=())
        if not body:
            raise GatewayError(422, "Nothing to update",
                               "give at least one of version, hardware, min_instances, max_instances")
        current = item["current_release"]
        config = check_config({**current["configuration"], **body})
        version = current["version"]
        if "version" in body:
            version = self._model_version(current["model"], body["version"]).version_id
        key = f"{owner}/{name}"
        with self.lock:
            item["current_release"] = release(current["number"] + 1, current["model"], version, config)
            self._save()
            pool = self.gateway.pools.get(key)
            if pool:
                pool.configure(config["min_instances"], config["max_instances"])
        return item

    def delete(self, owner: str, name: str) -> None:
        self.get(owner, name)
        key = f"{owner}/{name}"
        pool = self.gateway.pools.get(key)
        if pool and pool.busy():
            raise GatewayError(409, "Deployment in use", f"deployment {key} has predictions queued or running; "
                                                         "delete it when they have finished")
        with self.lock:
            self.items.pop(key, None)
            self._save()
            pool = self.gateway.pools.pop(key, None)
        if pool:
            pool.stop()

    def pool_for(self, owner: str, name: str):
        item = self.get(owner, name)
        key = f"{owner}/{name}"
        config = item["current_release"]["configuration"]
        if config["max_instances"] == 0:
            raise GatewayError(409, "Deployment has no instances",
                               f"deployment {key} has max_instances 0, so it runs no predictions; raise it")
        pool = self.gateway.pools.get(key)
        if pool is None:
            raise GatewayError(404, "Model not found",
                               f"deployment {key} runs {item['current_release']['model']}, which this gateway does not serve")
        return item, pool

    def _model_version(self, model, version):
        if not isinstance(model, str) or "/" not in model:
            raise GatewayError(422, "Invalid deployment", "model: expected owner/name, e.g. local/llm")
        if not isinstance(version, str) or not version:
            raise GatewayError(422, "Invalid deployment", "version: expected the model's version id")
        owner, _, name = model.partition("/")
        entry = self.gateway.model(owner, name)
        if version != entry.version_id:
            raise GatewayError(422, "Invalid deployment",
                               f"version: {version} is not a version of {entry.full_name}; this gateway serves "
                               f"{entry.version_id}")
        return entry


def check_fields(body: dict, required: tuple) -> None:
    allowed = {"name", "model", "version", "hardware", "min_instances", "max_instances"} if required else \
        {"version", "hardware", "min_instances", "max_instances"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise GatewayError(422, "Invalid deployment", f"{unknown[0]}: not a field of this request "
                                                      f"(expected {', '.join(sorted(allowed))})")
    missing = [k for k in required if k not in body]
    if missing:
        raise GatewayError(422, "Invalid deployment", f"{missing[0]}: required")


def check_config(body: dict) -> dict:
    hardware = body["hardware"]
    skus = published_hardware()
    if hardware not in skus:
        raise GatewayError(422, "Invalid deployment", f"hardware: {hardware!r} is not one of {', '.join(skus)}")
    config = {"hardware": hardware}
    for key, (low, high) in LIMITS.items():
        value = body[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise GatewayError(422, "Invalid deployment", f"{key}: expected an integer from {low} to {high}")
        config[key] = value
    if config["min_instances"] > config["max_instances"]:
        raise GatewayError(422, "Invalid deployment", "min_instances: must not be more than max_instances")
    return config


def release(number: int, model: str, version: str, config: dict) -> dict:
    return {"number": number, "model": model, "version": version, "created_at": now_iso(),
            "created_by": {"type": "user", "username": OWNER, "name": OWNER},
            "configuration": config}


# ---------------------------------------------------------------- routes


def deployment_routes(gateway: Gateway, create_for, json_body) -> list[Route]:
    """The `/v1/deployments…` routes. `create_for(entry, request, body, worker=, extra=)` is the
    gateway's own prediction creation (Prefer: wait, Cancel-After, validation)."""
    deployments = Deployments(gateway)

    async def list_deployments(request: Request) -> Response:
        return JSONResponse({"next": None, "previous": None, "results": deployments.list()})

    async def create_deployment(request: Request) -> Response:
        return JSONResponse(deployments.create(await json_body(request)))

    async def get_deployment(request: Request) -> Response:
        p = request.path_params
        return JSONResponse(deployments.get(p["owner"], p["name"]))

    async def update_deployment(request: Request) -> Response:
        p = request.path_params
        return JSONResponse(deployments.update(p["owner"], p["name"], await json_body(request)))

    async def delete_deployment(request: Request) -> Response:
        p = request.path_params
        deployments.delete(p["owner"], p["name"])
        return Response(status_code=204)

    async def create_prediction(request: Request) -> Response:
        p = request.path_params
        item, pool = deployments.pool_for(p["owner"], p["name"])
        body = await json_body(request)
        if "version" in body:
            raise GatewayError(422, "Invalid input", "version: a deployment runs its own version; leave it out")
        entry = gateway.models[pool.model]
        return await create_for(entry, request, body, worker=pool,
                                extra={"deployment": f"{item['owner']}/{item['name']}"})

    return [
        Route("/v1/deployments", list_deployments, methods=["GET"]),
        Route("/v1/deployments", create_deployment, methods=["POST"]),
        Route("/v1/deployments/{owner}/{name}", get_deployment, methods=["GET"]),
        Route("/v1/deployments/{owner}/{name}", update_deployment, methods=["PATCH"]),
        Route("/v1/deployments/{owner}/{name}", delete_deployment, methods=["DELETE"]),
        Route("/v1/deployments/{owner}/{name}/predictions", create_prediction, methods=["POST"]),
    ]
