"""Every GPU path once (issue 23): at Stable Diffusion 1.5's full size with random weights (a benchmark:
seconds, peak memory, component sizes, the full fine-tune's memory estimate against its measured
peak), or on the demo model in float16/bfloat16 against float32 (the per-path smoke gpu_check.sh runs
first on a GPU).

    python benchmarks/bench_sd15_paths.py                          # SD 1.5 size, this device, --dtype auto
    python benchmarks/bench_sd15_paths.py --px 64 --steps 1 --dtype float16 --paths "video clip,train full + extraction"
    python benchmarks/bench_sd15_paths.py --size demo --check --dtypes float16,bfloat16      # the smoke
    python benchmarks/bench_sd15_paths.py --size demo --check --device cpu                   # its CPU dry run

Benchmark: the paths run in groups, each group in its own process (a fresh peak): generation (LoRA at
α, blend, fused at fixed α, α switch, embedding, storyboard, compare + sweep, survey), ControlNet,
Evaluate, video, and each training method alone. Per path: seconds of the call (a path's first call
includes loading what it adds: a ControlNet, the motion adapter, CLIP/DINO), the process's peak RSS
(and on CUDA the peak allocated) after it, whether its pixels are finite. A watchdog stops a group
when the machine's free memory falls under --min-free-gib. Check (the smoke): one process, a studio per
dtype; each path's images compared with the float32 images of the same seeds (tests/precision_checks),
evaluation scores within 4u; exit status 1 when a path fails. The smoke refuses to import gradio (the
GPU image has none): what it runs is what a headless GPU job needs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
GIB = 1 << 30
GROUPS = {
    "generation": ["generate LoRA α", "blend", "fused fixed α (again)", "α switch", "TI embedding", "TI + LoRA",
                   "storyboard", "compare + α sweep", "survey build"],
    "controlnet": ["ControlNet canny", "ControlNet depth", "ControlNet scribble"],
    "evaluate": ["evaluate (CLIP/DINO)"],
    "video": ["video clip", "transition", "restyle (canny)"],
    "train lora": ["train lora"], "train ti": ["train ti"], "train motion": ["train motion"],
    "train full": ["train full + extraction"],
}
NEEDS_AV = {"restyle (canny)", "train motion"}


def rss_gib(peak: bool = True) -> float:
    if peak:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GIB
    return 0.0


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("inf")


def finite(result) -> bool:
    import numpy as np

    from tests.precision_checks import as_array

    if isinstance(result, dict):
        return all(np.isfinite(v) for v in result.values())
    return bool(np.isfinite(as_array(result)).all()) and float(as_array(result).std()) > 0


def has_av() -> bool:
    import importlib.util

    return importlib.util.find_spec("av") is not None


def configure(device: str) -> str:
    """The device to use ("auto": CUDA when there is one); float32 stays float32 on a GPU (no TF32)."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""       # before torch looks for a GPU; children inherit it
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"


# ---- one group, in this process ---------------------------------------------------------------------
def run_group(args) -> int:
    import torch

    from tests.precision_paths import PATHS, Ctx, open_studio

    models = json.loads((Path(args.work) / "models" / "manifest.json").read_text())
    base_rss = rss_gib(peak=False)
    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    studio = open_studio(models, args.dtype, Path(args.work) / "run")
    if not args.group.startswith("train"):
        studio.models.pipeline()
    load_s = time.perf_counter() - t0
    ctx = Ctx(studio, models, Path(args.work) / "run" / args.dtype, px=args.px, steps=args.steps)
    ctx.work.mkdir(parents=True, exist_ok=True)
    for name in GROUPS[args.group]:
        row = {"path": name, "group": args.group, "load_s": round(load_s, 2), "base_rss_gib": round(base_rss, 2)}
        if name in NEEDS_AV and not has_av():
            row["error"] = "skipped: PyAV (av) is not installed"
        else:
            ctx.notes.clear()
            t1 = time.perf_counter()
            try:
                result = PATHS[name](ctx)
                row.update(seconds=round(time.perf_counter() - t1, 2), finite=finite(result))
            except Exception as exc:  # noqa: BLE001 - reported per path
                row.update(seconds=round(time.perf_counter() - t1, 2), error=f"{type(exc).__name__}: {exc}"[:300])
            row["notes"] = {k: v for k, v in ctx.notes.items() if k != "losses"}
        row["peak_rss_gib"] = round(rss_gib(), 2)
        if cuda:
            row["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        print("ROW " + json.dumps(row), flush=True)
    studio.close()
    return 0


# ---- the benchmark: groups in child processes ---------------------------------------------------------
def full_estimate(models: dict, px: int) -> dict:
    from training import config as tconfig
    from training.full import required_bytes

    cfg = tconfig.preset("smoke", shot="close", method="full", resolution=px, batch_size=1)
    params = models["params"]["unet"]
    return {"unet_params": params, "estimate_gib": round(required_bytes(params, cfg) / GIB, 2),
            "optimizer_and_weights_gib": round(params * 16 / GIB, 2)}


def run_child(args, group: str) -> list[dict]:
    cmd = [sys.executable, __file__, "--group", group, "--work", args.work, "--dtype", args.dtype, "--px",
           str(args.px), "--steps", str(args.steps), "--device", args.device]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
    rows, low = [], False
    import threading

    def watch():
        nonlocal low
        while proc.poll() is None:
            if mem_available_gib() < args.min_free_gib:
                low = True
                proc.kill()          # our own child, by its pid: the machine is shared
                return
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    for line in proc.stdout:
        if line.startswith("ROW "):
            rows.append(json.loads(line[4:]))
            print(format_row(rows[-1]), flush=True)
    proc.wait()
    if proc.returncode or low:
        done = {r["path"] for r in rows}
        why = f"stopped: free memory under {args.min_free_gib} GiB" if low else f"exit status {proc.returncode}"
        rows += [{"path": p, "group": group, "error": why} for p in GROUPS[group] if p not in done]
    return rows


def format_row(r: dict) -> str:
    status = r.get("error") or ("ok" if r.get("finite") else "NOT FINITE / constant")
    gpu = f" | {r['gpu_peak_gib']}" if "gpu_peak_gib" in r else ""
    notes = r.get("notes") or {}
    seconds = f"{r.get('seconds', '-')}" + (f" (training {notes['train_seconds']})" if "train_seconds" in notes else "")
    peak = f"{r.get('peak_rss_gib', '-')}" + (f" (training {notes['train_peak_rss_gib']})"
                                                if "train_peak_rss_gib" in notes else "")
    return f"| {r['path']} | {seconds} | {peak}{gpu} | {status} |"


def bench(args) -> int:
    from tests.precision_models import build

    t0 = time.perf_counter()
    models = build(args.size, Path(args.work) / "models")
    print(f"models built in {time.perf_counter() - t0:.0f} s under {args.work}/models", flush=True)
    print("component parameters: " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in models["params"].items()))
    wanted = [p.strip() for p in args.paths.split(",")] if args.paths else None
    groups = [g for g, paths in GROUPS.items() if not wanted or any(p in wanted for p in paths)]
    estimate = full_estimate(models, args.px)
    print(f"\n{args.size}, --dtype {args.dtype}, {args.px} px, {args.steps} steps, device {args.device}")
    print("| path | seconds | peak RSS GiB" + (" | GPU peak GiB" if args.device == "cuda" else "") + " | result |")
    print("|---|---|---|" + ("---|" if args.device == "cuda" else "") + "---|")
    rows = []
    for group in groups:
        need = estimate["estimate_gib"] + 2 if group == "train full" and args.device == "cpu" else 0
        if need and mem_available_gib() < need:
            rows += [{"path": p, "group": group, "error": f"skipped: {mem_available_gib():.1f} GiB free, "
                      f"needs about {need:.1f}"} for p in GROUPS[group]]
            print(format_row(rows[-1]), flush=True)
            continue
        rows += run_child(args, group)
    full = next((r for r in rows if r["path"] == "train full + extraction" and "seconds" in r), None)
    if full is not None:
        cpu_peak = full.get("notes", {}).get("train_peak_rss_gib", full["peak_rss_gib"]) - full["base_rss_gib"]
        estimate["measured_peak_gib"] = round(full.get("notes", {}).get("train_gpu_peak_gib", cpu_peak), 2)
        estimate["measured"] = ("GPU max allocated" if "train_gpu_peak_gib" in full.get("notes", {})
                                else "peak RSS above the imports, training only")
    print("\nfull fine-tune memory: " + json.dumps(estimate))
    report = {"size": args.size, "dtype": args.dtype, "px": args.px, "steps": args.steps, "device": args.device,
              "params": models["params"], "rows": rows, "full_fine_tune": estimate}
    Path(args.json or Path(args.work) / "report.json").write_text(json.dumps(report, indent=2))
    return 1 if any("error" in r and not r["error"].startswith("skipped") for r in rows) else 0


# ---- the smoke: every path in each dtype against float32, one process --------------------------------------
def check(args) -> int:
    sys.modules["gradio"] = None      # the GPU image has no gradio: a path that needs it fails here
    from tests import precision_checks as pc
    from tests.precision_models import build
    from tests.precision_paths import PATHS, Ctx, open_studio

    work = Path(args.work)
    models = build(args.size, work / "models")
    dtypes = ["float32"] + [d for d in args.dtypes.split(",") if d != "float32"]
    ctxs = {d: Ctx(open_studio(models, d, work / "run"), models, work / "run" / d, px=args.px, steps=args.steps)
            for d in dtypes}
    names = [p.strip() for p in args.paths.split(",")] if args.paths else list(PATHS)
    print("| path | " + " | ".join(dtypes) + " |\n|---|" + "---|" * len(dtypes), flush=True)
    failed = 0
    for name in names:
        cells, ref = [], None
        for d in dtypes:
            if name in NEEDS_AV and not has_av():
                cells.append("skipped: no PyAV")
                continue
            ctx = ctxs[d]
            ctx.work.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stdout(io.StringIO()):      # the trainer's progress lines
                    out = PATHS[name](ctx)
                why = compare(pc, out, ref, d, name) if d != "float32" else (None if finite(out) else "not finite")
                ref = out if d == "float32" else ref
            except Exception as exc:  # noqa: BLE001 - reported per path
                why = f"{type(exc).__name__}: {str(exc)[:160]}"
            failed += why is not None
            cells.append(f"ok {time.perf_counter() - t0:.2f}s" if why is None else f"FAIL {why}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    for ctx in ctxs.values():
        ctx.studio.close()
    print(f"{len(names) * len(dtypes) - failed} ok, {failed} failed")
    return 1 if failed else 0


def compare(pc, out, ref, dtype: str, name: str) -> str | None:
    if ref is None:
        return "no float32 result to compare with"
    if isinstance(out, dict):
        u = pc.UNIT_ROUNDOFF[dtype]
        bad = {k: (out[k], ref[k]) for k in ref if not abs(out[k] - ref[k]) <= 4 * u}
        return f"scores off: {bad}" if bad else None
    return pc.difference(pc.as_array(out), pc.as_array(ref), dtype, name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["sd15", "demo"], default="sd15")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--dtype", default="auto", help="benchmark: the studio's --dtype")
    parser.add_argument("--dtypes", default="float16,bfloat16", help="--check: compared with float32")
    parser.add_argument("--check", action="store_true", help="the per-path precision smoke (exit 1 on a failure)")
    parser.add_argument("--px", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--paths", default="", help="comma-separated path names (default: all)")
    parser.add_argument("--work", default="", help="folder for models and outputs (kept; default a new temp folder)")
    parser.add_argument("--json", default="", help="benchmark: write the report here (default WORK/report.json)")
    parser.add_argument("--min-free-gib", type=float, default=1.5, help="benchmark: stop a group below this")
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    args.device = configure(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.work = args.work or tempfile.mkdtemp(prefix=f"paths-{args.size}-")
    if args.group:
        return run_group(args)
    return check(args) if args.check else bench(args)


if __name__ == "__main__":
    sys.exit(main())
