"""How fast `python app.py` is serving offline, and what importing `app` costs.

    python benchmarks/bench_startup.py

Runs the app as a user does (HF_HUB_OFFLINE=1, default --model, so the studio resolves SD 1.5,
finds it neither cached nor reachable and falls back to the demo model) on a fresh data folder
(cold: the demo model is built) and again on the same folder (warm). Target: serving < 15 s.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_serving(data_dir: str) -> float:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DREAMSHOT_DATA": data_dir, "DREAMSHOT_PORT": str(port)}
    env.pop("DREAMSHOT_MODEL", None)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("app did not serve within 120 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def import_time() -> tuple[float, bool]:
    code = ("import time, sys; t = time.perf_counter(); import app; "
            "print(time.perf_counter() - t, 'torch' in sys.modules or 'diffusers' in sys.modules)")
    with tempfile.TemporaryDirectory() as data:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "DREAMSHOT_DATA": data, "DREAMSHOT_MODEL": "demo"}, check=True)
    seconds, loaded = out.stdout.split()
    return float(seconds), loaded == "True"


def main() -> None:
    seconds, model_code_imported = import_time()
    print(f"import app: {seconds:.2f} s; torch/diffusers imported: {model_code_imported}")
    with tempfile.TemporaryDirectory() as data:
        cold = time_to_serving(data)
        warm = time_to_serving(data)
    print(f"python app.py serving, cold (builds demo model): {cold:.2f} s = {cold / TARGET_S:.2f} x the 15 s target")
    print(f"python app.py serving, warm:                     {warm:.2f} s = {warm / TARGET_S:.2f} x the 15 s target")


if __name__ == "__main__":
    main()
