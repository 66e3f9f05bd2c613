"""Survey answer latency under a crowd: N participants (default 50) answer concurrently through the
real app on 127.0.0.1 with gradio_client; prints p50 / p95 / max answer latency, throughput and the
ratio of p95 to a 1 s budget (what a participant on a phone would still call instant).

    python benchmarks/bench_survey.py [--participants 50] [--pairs 3] [--db URL]

Only the answering is measured: the survey's pairs are written straight into a fresh studio (64 px
placeholder pictures), so no model is loaded. ``--db postgresql://...`` measures on PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DREAMSHOT_DATA", tempfile.mkdtemp(prefix="bench-survey-app-"))
os.environ.setdefault("DREAMSHOT_MODEL", "demo")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
BUDGET_S = 1.0


def make_survey(studio, pairs: int) -> None:
    from PIL import Image

    from dreamshot import schema
    from dreamshot.storage import now
    from dreamshot.survey.images import survey_dir

    with studio.db.write() as conn:
        sid = conn.execute(schema.surveys.insert().values(
            name="bench", state="open", per_participant=pairs, intro="benchmark", settings={},
            created_at=now(), opened_at=now())).inserted_primary_key[0]
        folder = survey_dir(studio, sid)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(pairs * 2):
            names = []
            for kind, colour in (("base", (90, 90, 90)), ("lora", (200, 120, 40))):
                path = folder / f"{i:04d}-{kind}.png"
                Image.new("RGB", (64, 64), colour).save(path)
                names.append(path.relative_to(studio.settings.data_dir).as_posix())
            conn.execute(schema.survey_pairs.insert().values(
                survey_id=sid, position=i, shot=("close", "medium")[i % 2], caption=f"prompt {i}",
                prompt=f"a photo of prompt {i}", seed=i, alpha=1.0, lora_name="x", status="ready",
                base_image=names[0], lora_image=names[1], meta={}, created_at=now()))


class HttpClient:
    """The participant API over plain HTTP: one POST per call to /gradio_api/run/<name> (what a
    non-Python client would do); light enough that 50 of them do not starve the server's CPU."""

    def __init__(self, url: str, http):
        self.url, self.http = url.rstrip("/"), http

    def predict(self, *data, api_name: str):
        r = self.http.post(f"{self.url}/gradio_api/run{api_name}", json={"data": list(data)}, timeout=300)
        r.raise_for_status()
        return r.json()["data"][0]


def participant(client, latencies: list, lock: threading.Lock) -> int:
    view = client.predict("bench", "", api_name="/survey_join")
    n = 0
    while not view["finished"]:
        for q in ("like", "shot", "prompt"):
            t0 = time.perf_counter()
            ack = client.predict(view["token"], view["slot"], view["pair_id"], q, "A", api_name="/survey_answer")
            with lock:
                latencies.append(time.perf_counter() - t0)
            assert ack["stored"]
            n += 1
        view = client.predict(view["token"], api_name="/survey_view")
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--participants", type=int, default=50)
    ap.add_argument("--pairs", type=int, default=3, help="pairs per participant (+1 repeat)")
    ap.add_argument("--db", default=None)
    ap.add_argument("--client", choices=["http", "gradio"], default="http",
                    help="plain HTTP POSTs (default) or one gradio_client session per participant")
    args = ap.parse_args()

    import subprocess
    import urllib.request

    from gradio_client import Client

    from dreamshot.settings import Settings
    from dreamshot.studio import Studio

    data = Path(tempfile.mkdtemp(prefix="bench-survey-"))
    studio = Studio.open(Settings(data_dir=data, model="demo", db_url=args.db))
    make_survey(studio, args.pairs)
    studio.close()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The server runs in its own process (as in production), not in the clients' interpreter.
    env = dict(os.environ, DREAMSHOT_DATA=str(data), DREAMSHOT_SURVEY_MAX_NEW_PER_HOUR="1000000",
               DREAMSHOT_SURVEY_MAX_ANSWERS_PER_MIN="1000000", **({"DREAMSHOT_DB": args.db} if args.db else {}))
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--survey-only", "--model", "demo",
                               "--port", str(port)], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        probe = Client(url, verbose=False)
        for _ in range(600):   # app.py preloads the base model in the background: measure after that
            if probe.predict(api_name="/status").get("model_loaded"):
                break
            time.sleep(0.5)
        if args.client == "gradio":   # one session per participant, as browsers have; made beforehand
            with ThreadPoolExecutor(4) as pool:
                clients = list(pool.map(lambda _: Client(url, verbose=False, httpx_kwargs={"timeout": 300}),
                                        range(args.participants)))
        else:
            import httpx

            http = httpx.Client(limits=httpx.Limits(max_connections=args.participants))
            clients = [HttpClient(url, http) for _ in range(args.participants)]
        latencies: list[float] = []
        lock = threading.Lock()
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.participants) as pool:
            sent = sum(pool.map(lambda c: participant(c, latencies, lock), clients))
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(30)
    studio = Studio.open(Settings(data_dir=data, model="demo", db_url=args.db))
    from dreamshot.survey.service import service

    stored = service(studio).info("bench").answers
    studio.close()
    lat = sorted(latencies)
    p95 = lat[max(0, int(round(0.95 * len(lat))) - 1)]
    print(f"client: {args.client}; load average before the run: {load:.1f} on {os.cpu_count()} CPUs")
    print(f"participants {args.participants}, answers sent {sent}, stored {stored}, wall {wall:.1f}s, "
          f"{sent / wall:.1f} answers/s")
    print(f"answer latency: p50 {statistics.median(lat) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"max {lat[-1] * 1000:.0f} ms")
    print(f"p95 / {BUDGET_S:g} s budget = {p95 / BUDGET_S:.2f}  ({'within' if p95 <= BUDGET_S else 'OVER'} budget)")
    return 0 if stored == sent else 1


if __name__ == "__main__":
    sys.exit(main())
