"""The micro-batching rule (issue 20, defect 2; `llmrec.serving.batching`): a request that finds the model idle runs
at once, however long the window; requests queued while the model is busy form the next batch at once; the one
wait (after a pass of several requests, for their clients to come back) ends as soon as they are back and never
lasts longer than the window; over HTTP a lone client's latency does not include the window while concurrent
requests are still batched together; and the `batching` part of bench/serving.py runs real servers side by side."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from bench_scripts import load_bench_script
from test_serving_support import ServerThread, request, same_answer

from llmrec.data.dataset import ProcessedDataset
from llmrec.serving.batching import MicroBatcher
from llmrec.serving.recommender import Recommender
from llmrec.serving.server import create_app

WINDOW_MS = 500  # far longer than any pass here: a request that waited for it would show


class Model:
    """A `run` for the batcher: records each batch, takes `seconds` per pass, answers q -> q * 10."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.calls = seconds, []

    def __call__(self, queries):
        self.calls.append(list(queries))
        time.sleep(self.seconds)
        return [q * 10 for q in queries]


async def timed(batcher: MicroBatcher, query) -> tuple[object, float]:
    started = time.monotonic()
    answer = await batcher.submit(query)
    return answer, time.monotonic() - started


def test_a_lone_client_never_waits_for_the_window():
    model = Model()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=16, max_wait_ms=WINDOW_MS)
        await batcher.start()
        out = [await timed(batcher, q) for q in range(1, 6)]  # one client: each request after the previous answer
        await batcher.stop()
        return out, batcher

    out, batcher = asyncio.run(scenario())
    assert [a for a, _ in out] == [10, 20, 30, 40, 50] and model.calls == [[1], [2], [3], [4], [5]]
    assert max(s for _, s in out) < 0.25 * WINDOW_MS / 1000, out  # the 500 ms window never applied
    assert batcher.waited == 0


def test_requests_queued_while_the_model_is_busy_form_the_next_batch_at_once():
    model = Model(seconds=0.2)

    async def scenario():
        batcher = MicroBatcher(model, max_batch=16, max_wait_ms=WINDOW_MS)
        await batcher.start()
        first = asyncio.ensure_future(timed(batcher, 1))
        await asyncio.sleep(0.05)  # the first request is in the model now
        rest = [asyncio.ensure_future(timed(batcher, q)) for q in (2, 3, 4, 5)]
        out = await asyncio.gather(first, *rest)
        await batcher.stop()
        return out

    out = asyncio.run(scenario())
    assert model.calls == [[1], [2, 3, 4, 5]]  # the first ran alone at once; the others queued meanwhile
    assert [a for a, _ in out] == [10, 20, 30, 40, 50]
    assert all(s < 0.2 + 0.2 + 0.25 for _, s in out[1:]), out  # rest of the first pass + their own: no window


def test_after_a_pass_of_several_the_window_waits_for_that_many_and_no_longer():
    model = Model(seconds=0.1)

    async def scenario():
        batcher = MicroBatcher(model, max_batch=16, max_wait_ms=WINDOW_MS)
        await batcher.start()
        await asyncio.gather(*(batcher.submit(q) for q in (1, 2, 3, 4)))  # a pass of four

        async def client(q, delay):  # the four clients come back, 30 ms apart
            await asyncio.sleep(delay)
            return await timed(batcher, q)

        back = await asyncio.gather(*(client(q, 0.03 * i) for i, q in enumerate((5, 6, 7, 8))))
        await asyncio.sleep(0.3)  # a lull (longer than a pass): the next three run at once, without a window
        one = await asyncio.gather(*(batcher.submit(q) for q in (11, 12, 13)))  # a pass of three ...
        alone = await timed(batcher, 14)  # ... and only one client comes back: it waits the window, no longer
        await asyncio.sleep(0.3)
        after_lull = await timed(batcher, 15)
        await batcher.stop()
        return back, one, alone, after_lull, batcher

    back, one, alone, after_lull, batcher = asyncio.run(scenario())
    assert model.calls == [[1, 2, 3, 4], [5, 6, 7, 8], [11, 12, 13], [14], [15]]
    assert [a for a, _ in back] == [50, 60, 70, 80] and one == [110, 120, 130]
    assert back[0][1] < 0.09 + 0.1 + 0.2, back  # the window closed when the fourth came back (90 ms), not at 500
    assert WINDOW_MS / 1000 <= alone[1] < WINDOW_MS / 1000 + 0.1 + 0.3, alone  # the window is the longest wait
    assert after_lull[1] < 0.1 + 0.2, after_lull  # after a lull a request runs at once
    assert batcher.waited == 2  # for the four clients, and for the one of three that came back


@pytest.mark.usefixtures("one_torch_thread")  # `rec` comes from conftest.py
def test_over_http_a_lone_client_does_not_wait_while_concurrent_requests_share_batches(rec):
    app = create_app(rec, batch_size=16, batch_wait_ms=WINDOW_MS)
    batcher = app.app.state.batcher  # `app` is the Guard middleware around FastAPI
    srv = ServerThread(app)
    try:
        latencies = []
        for history in ([1, 2, 3], [4, 5], [6], [7, 8, 9], [10, 11]):  # one client, one request after another
            started = time.monotonic()
            status, body = request(srv.port, "POST", "/recommend", {"history": history, "k": 3})
            latencies.append(time.monotonic() - started)
            assert status == 200 and same_answer(body["items"], rec.recommend(history, k=3))
        assert statistics.median(latencies) < 0.5 * WINDOW_MS / 1000, latencies
        assert (batcher.batches, batcher.batched, batcher.waited) == (5, 5, 0)

        histories = [[i, i + 1] for i in range(1, 17)]
        barrier = threading.Barrier(len(histories))

        def send(history):
            barrier.wait()
            return request(srv.port, "POST", "/recommend", {"history": history, "k": 3})

        with ThreadPoolExecutor(len(histories)) as pool:
            answers = list(pool.map(send, histories))
        assert all(status == 200 for status, _ in answers)
        assert all(same_answer(body["items"], rec.recommend(h, k=3)) for (_, body), h in zip(answers, histories))
        assert batcher.batched == 5 + 16 and batcher.batches - 5 < 16  # the 16 concurrent ones were grouped
    finally:
        srv.stop()


@pytest.mark.usefixtures("one_torch_thread")
def test_the_batching_benchmark_runs_servers_side_by_side_and_keeps_the_other_results(ckpt, tmp_path):
    script = load_bench_script("serving")
    args = script.parse_args(["batching", "--ckpt", str(ckpt), "--results", str(tmp_path / "r.json")])
    assert (args.requests, args.concurrency, args.batch_size, args.probe_requests) == (500, 16, 16, 96)
    assert args.thread_choices == list(range(1, (os.cpu_count() or 1) + 1))
    assert script.batching_label(ckpt) == "tiny"

    data = ProcessedDataset.load(ckpt.parent / "data")
    bodies = script.request_bodies(data, 6)
    want = Recommender.from_pretrained(ckpt, device="cpu").recommend_many([b["history"] for b in bodies], k=10)
    runs = script.run_against(ckpt, 4, 5.0, 1, [("concurrent", bodies, 3), ("lone", bodies, 1)],
                              {"concurrent": want, "lone": want})  # a real `llmrec serve` subprocess
    for name, concurrency in (("concurrent", 3), ("lone", 1)):
        run = runs[name]
        assert (run["requests"], run["errors"], run["mismatches"], run["concurrency"]) == (6, 0, 0, concurrency)
        assert run["threads"] == 1 and run["rps"] > 0 and len(run["load_average"]["before"]) == 3

    results = tmp_path / "r.json"
    results.write_text(json.dumps({"load": {"rps": 1.0}, "batching": {"pretrained": {"speedup": 1.6}}}))
    script.write_batching(results, "tiny", {"speedup": 2.1})
    assert json.loads(results.read_text()) == {"load": {"rps": 1.0},
                                               "batching": {"pretrained": {"speedup": 1.6}, "tiny": {"speedup": 2.1}}}
