"""Many predictions from concurrent clients through one gateway: none lost, none duplicated."""

import threading
import time

from replicate.pagination import paginate

from tests.test_gateway import short

CLIENTS = 8
PER_CLIENT = 25


def test_200_predictions_from_8_concurrent_clients(gateway, capsys):
    results: dict[int, list] = {}
    errors = []

    def client_loop(n: int):
        client = gateway.client()  # each thread its own client and connection pool
        mine = []
        try:
            for i in range(PER_CLIENT):
                seed = n * PER_CLIENT + i
                p = client.models.predictions.create(model="local/llm", input=short(seed=seed, tokens=3), wait=60)
                while p.status not in ("succeeded", "failed", "canceled"):  # bounded by the test's timeout
                    time.sleep(0.05)
                    p.reload()
                mine.append((seed, p))
        except Exception as e:  # reported below, with the thread
            errors.append((n, repr(e)))
        results[n] = mine

    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    elapsed = time.monotonic() - started
    assert not errors, errors
    done = [p for mine in results.values() for _, p in mine]
    assert len(done) == CLIENTS * PER_CLIENT
    assert len({p.id for p in done}) == len(done)  # no duplicates
    assert all(p.status == "succeeded" for p in done), [p.error for p in done if p.status != "succeeded"]
    # each prediction ran its own input
    assert all(p.input["seed"] == seed for mine in results.values() for seed, p in mine)
    # and the history has every one of them, each once, across pages
    client = gateway.client()
    listed = [p.id for page in paginate(client.predictions.list) for p in page]
    assert len(listed) == len(set(listed))
    assert {p.id for p in done} <= set(listed)
    pages = sum(1 for _ in paginate(client.predictions.list))
    assert pages >= 2  # 100 per page
    with capsys.disabled():
        print(f"\ngateway throughput: {len(done)} predictions (3 tokens each, tiny llm) from {CLIENTS} clients "
              f"in {elapsed:.1f}s = {len(done) / elapsed:.1f} predictions/s; {len(listed)} listed over {pages} pages")
