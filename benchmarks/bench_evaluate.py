"""Evaluation throughput on the tiny demo model, printed as seconds and ratios (no targets asserted).

    python benchmarks/bench_evaluate.py                 # 64 px, 12 captions (24 pairs), batch 1 vs 4
    python benchmarks/bench_evaluate.py --size 128 --pairs 24

- generation: seconds per pair (base + fine-tuned image) at batch 1 and batch N, and their ratio;
- scoring: seconds per pair for CLIP-T, DINO and the judge (tiny CLIP/DINO from configs);
- resume: seconds of a second run over a finished folder (nothing generated: plan + scoring only).
Extrapolate to the paper's 1,500 captions (3,000 pairs with the ablation) from the per-pair figures.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def setup(data: Path, per_shot: int):
    from diffusers import UNet2DConditionModel

    from dreamshot.demo_model import ensure_demo_model
    from dreamshot.generate.loras import LoraLibrary
    from dreamshot.settings import Settings
    from dreamshot.studio import Studio
    from tests.evaluate_fixtures import add_held_out, build_tiny_clip, build_tiny_dino
    from tests.generate_fixtures import random_lora

    studio = Studio.open(Settings(data_dir=data, model="demo"))
    unet = UNet2DConditionModel.from_pretrained(ensure_demo_model(Path(studio.settings.models_dir)) / "unet")
    lib = LoraLibrary(studio)
    for i, shot in enumerate(("close", "medium", "long")):
        lib.register(random_lora(unet, data / "loras" / shot, seed=i + 1), name=shot, shot=shot, origin="trained")
    add_held_out(studio, per_shot)
    return studio, str(build_tiny_clip(data / "clip")), str(build_tiny_dino(data / "dino"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=12, help="captions (each also gets an ablation pair)")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    from dreamshot.evaluate.pairs import EvalOptions
    from dreamshot.evaluate.service import service

    with tempfile.TemporaryDirectory() as tmp:
        studio, clip, dino = setup(Path(tmp) / "data", per_shot=-(-args.pairs // 3))
        svc = service(studio)
        svc.clip(clip), svc.dino(dino)
        from dreamshot.generate.service import GenerationRequest

        svc.generation().generate(GenerationRequest(prompt="warm-up", shot="close", width=args.size,
                                                    height=args.size, steps=1, seed=0), save=False)
        times = {}
        for batch in (1, args.batch):
            options = EvalOptions(out=f"{tmp}/run-b{batch}", pairs=args.pairs, clip_model=clip, dino_model=dino,
                                  width=args.size, height=args.size, steps=args.steps, batch=batch,
                                  alpha_subset=0, bootstrap=500)
            t0 = time.perf_counter()
            results = svc.run(options)
            times[batch] = time.perf_counter() - t0
            t1 = time.perf_counter()
            svc.run(options)                      # resume over a finished folder: scoring only
            times[f"rescore{batch}"] = time.perf_counter() - t1
        n = results["pairs_done"]
        print(f"{n} pairs at {args.size}px, {args.steps} steps (tiny demo model, tiny CLIP/DINO)")
        print(f"  batch 1:          {times[1] / n:.3f} s/pair (generation + scoring)")
        print(f"  batch {args.batch}:          {times[args.batch] / n:.3f} s/pair  ratio {times[args.batch] / times[1]:.2f}")
        print(f"  resume, all done: {times[f'rescore{args.batch}'] / n:.3f} s/pair (plan + scoring only)")
        studio.close()


if __name__ == "__main__":
    main()
