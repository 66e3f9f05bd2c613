"""Trainer overhead benchmark, two ratios:

1. speed: steady-state seconds per training step of the real trainer divided by the seconds of a
   bare UNet forward + backward with the same LoRA, same model, same batch (target <= 1.15: with the
   VAE latents and text embeddings cached, a step should cost the UNet alone); one process.
2. memory (``--memory``): peak memory of a whole trainer run (caching, steps, validation, export)
   divided by the peak of a minimal LoRA loop (the UNet with the same LoRA, AdamW, random latents
   and embeddings of the same shapes; nothing else) - target <= 1.3. Each side runs in its own fresh
   process: on a GPU ``torch.cuda.max_memory_allocated``; on a CPU the peak RSS above the process's
   RSS once the libraries are imported.

    python benchmarks/bench_train.py                    # tiny demo model (CPU friendly)
    python benchmarks/bench_train.py --memory           # + the memory ratio
    python benchmarks/bench_train.py --full-sd15 --memory   # SD 1.5's full architecture, random weights (GPU box)
    python benchmarks/bench_train.py --resolution 512 --batch-size 4 --steps 40 --mixed-precision fp16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_full_sd15(out: Path) -> Path:
    """SD 1.5's architecture (UNet 860M, VAE, CLIP ViT-L/14 text encoder) with random weights."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from dreamshot.clip_tokenizer import write_clip_tokenizer
    from dreamshot.demo_model import SD15_SCHEDULER

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
                                                projection_dim=768, hidden_act="quick_gelu"))
    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(out.parent / "tokenizer-src")))
    tokenizer.model_max_length = 77
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def peak_memory(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU (max allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RAM (process peak RSS)"


def bare_unet_seconds(t, reps: int) -> list[float]:
    """Forward + backward of the same (LoRA-adapted, accelerate-prepared) UNet on a batch of the same
    shape, nothing else: no data, no optimizer, no logging."""
    import torch
    import torch.nn.functional as F

    c = t.config
    side = c.resolution // 8
    g = torch.Generator(t.device).manual_seed(0)
    latents = torch.randn((c.batch_size, 4, side, side), generator=g, device=t.device, dtype=t.weight_dtype)
    emb = t.caches.text_emb[: 1].expand(c.batch_size, -1, -1).contiguous()
    timesteps = torch.randint(0, 1000, (c.batch_size,), generator=g, device=t.device)
    noise = torch.randn_like(latents)
    times = []
    for _ in range(reps):
        sync(t.device)
        start = time.perf_counter()
        pred = t.unet(latents, timesteps, emb, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float())
        t.accelerator.backward(loss)
        sync(t.device)
        times.append(time.perf_counter() - start)
        t.optimizer.zero_grad(set_to_none=True)
    return times


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def rss_bytes() -> int:
    """This process's resident memory now (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_bytes(device, baseline: int) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline


def train_config(args, model: Path, data: Path, out: Path, resolution: int, steps: int):
    from training import config as tconfig

    return tconfig.preset("smoke", shot="close", dataset=str(data), base_model=str(model), output_dir=str(out),
                          resolution=resolution, batch_size=args.batch_size, max_steps=steps,
                          mixed_precision=args.mixed_precision, target=args.target, validation_steps=0,
                          checkpoint_steps=0, gradient_checkpointing=args.gradient_checkpointing)


def minimal_loop(cfg, steps: int):
    """The smallest LoRA training loop: UNet + the same LoRA + AdamW on random inputs of the same shapes."""
    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from training.components import resolve_precision, weight_dtype

    precision = resolve_precision(cfg.mixed_precision)
    dtype, device = weight_dtype(precision), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    unet = UNet2DConditionModel.from_pretrained(cfg.base_model, subfolder="unet", dtype=dtype).to(device)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                target_modules=cfg.target_modules))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate)
    side, b = cfg.resolution // 8, cfg.batch_size
    autocast = torch.autocast(device.type, dtype=dtype) if precision != "no" else torch.autocast(device.type, enabled=False)
    for _ in range(steps):
        latents = torch.randn((b, 4, side, side), device=device, dtype=dtype)
        emb = torch.randn((b, 77, unet.config.cross_attention_dim), device=device, dtype=dtype)
        t = torch.randint(0, 1000, (b,), device=device)
        with autocast:
            pred = unet(latents, t, emb, return_dict=False)[0]
        F.mse_loss(pred.float(), latents.float()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return device


def measure_memory(args) -> int:
    """Child process: one side of the memory ratio; prints one JSON line."""
    import accelerate  # noqa: F401 - every library both sides import, before the baseline
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = rss_bytes()
    cfg = train_config(args, Path(args.model), Path(args.data), Path(args.out), args.resolution, args.steps)
    if args.measure_memory == "trainer":
        from training.trainer import train

        train(cfg)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = minimal_loop(cfg, args.steps)
    print(json.dumps({"side": args.measure_memory, "device": device.type, "peak_bytes": peak_bytes(device, baseline)}))
    return 0


def memory_ratio(args, model: Path, data: Path, work: Path, resolution: int) -> dict:
    sides = {}
    for side in ("trainer", "minimal"):
        cmd = [sys.executable, __file__, "--measure-memory", side, "--model", str(model), "--data", str(data),
               "--out", str(work / f"memory-{side}"), "--resolution", str(resolution), "--steps", "5",
               "--batch-size", str(args.batch_size), "--mixed-precision", args.mixed_precision,
               "--target", args.target, "--threads", str(args.threads)]
        cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        sides[side] = json.loads(done.stdout.strip().splitlines()[-1])
    trainer, minimal = sides["trainer"]["peak_bytes"], sides["minimal"]["peak_bytes"]
    what = "GPU max allocated" if sides["trainer"]["device"] == "cuda" else "CPU peak RSS above the imports"
    return {"memory": what, "trainer_peak_gib": round(trainer / 2**30, 3), "minimal_loop_peak_gib": round(minimal / 2**30, 3),
            "memory_ratio": round(trainer / max(minimal, 1), 3), "target_memory_ratio": 1.3}


def speed_ratio(args, model: Path, data: Path, work: Path, resolution: int) -> dict:
    from training.status import read_status
    from training.trainer import Trainer

    t = Trainer(train_config(args, model, data, work / "run", resolution, args.steps))
    t.check_inputs()
    t.setup()
    t.build_caches()
    t.prepare(None)
    # Interleave rounds of real trainer steps and bare UNet passes, so load from other processes on a
    # shared machine hits both alike; the first round is warm-up.
    steps, bare, chunk = [], [], 5
    t.total_steps = 0
    for round_ in range(max(2, args.steps // chunk)):
        t.total_steps += chunk
        t.loop()
        timed = bare_unet_seconds(t, chunk)
        if round_:
            steps += [e["step_s"] for e in read_status(work / "run" / "status.jsonl") if e.get("event") == "step"][-chunk + 1:]
            bare += timed[1:]
    trainer_s, bare_s = statistics.median(steps), statistics.median(bare)
    return {"device": str(t.device), "precision": t.precision, "steps_measured": len(steps),
            "trainer_s_per_step": round(trainer_s, 5), "bare_unet_fwd_bwd_s": round(bare_s, 5),
            "ratio": round(trainer_s / bare_s, 3), "target_ratio": 1.15, "peak_memory": peak_memory(t.device)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-sd15", action="store_true", help="SD 1.5's full architecture with random weights")
    parser.add_argument("--model", help="an existing SD 1.x diffusers folder instead")
    parser.add_argument("--resolution", type=int, default=None, help="default 128 (tiny) / 512 (full)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40, help="training steps, in rounds of 5 (the first is warm-up)")
    parser.add_argument("--mixed-precision", default="auto")
    parser.add_argument("--target", default="cross", choices=["cross", "all"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--memory", action="store_true", help="also the peak-memory ratio (two extra processes)")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory ratio")
    parser.add_argument("--measure-memory", choices=["trainer", "minimal"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_memory:
        return measure_memory(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from tests.training_helpers import make_imagefolder

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    if args.model:
        model = Path(args.model)
    elif args.full_sd15:
        model = build_full_sd15(work / "sd15-random")
    else:
        from dreamshot.demo_model import build_tiny_sd

        model = build_tiny_sd(work / "tiny-sd")
    resolution = args.resolution or (512 if args.full_sd15 else 128)
    data = make_imagefolder(work / "data", shots=("close",), per_shot=8, size=(resolution + 16, resolution))
    report = {"model": "SD 1.5 architecture, random weights" if args.full_sd15 else str(model.name),
              "resolution": resolution, "batch_size": args.batch_size, "target": args.target,
              "threads": __import__("torch").get_num_threads()}
    if not args.memory_only:
        report.update(speed_ratio(args, model, data, work, resolution))
    if args.memory or args.memory_only:
        report.update(memory_ratio(args, model, data, work, resolution))
    print(json.dumps(report, indent=2))
    if "ratio" in report:
        print(f"trainer step / bare UNet fwd+bwd = {report['ratio']:.3f} (target <= 1.15); "
              f"peak memory {report['peak_memory']}")
    if "memory_ratio" in report:
        print(f"trainer peak / minimal LoRA loop peak = {report['memory_ratio']:.3f} (target <= 1.3; "
              f"{report['trainer_peak_gib']} vs {report['minimal_loop_peak_gib']} GiB, {report['memory']})")
    return 0

if __name__ == "__main__":
    sys.exit(main())
