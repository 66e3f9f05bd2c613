"""Generation speed, all in one process and printed as ratios.

    python benchmarks/bench_generate.py                      # tiny demo model, 64 px (CPU, seconds)
    python benchmarks/bench_generate.py --size 512           # tiny model at 512 px
    python benchmarks/bench_generate.py --sd15 --size 512    # SD 1.5 architecture, random weights (GPU box)
    python benchmarks/bench_generate.py --sd15 --size 512 --compile   # + compiled mode (minutes of warm-up)

- plain vs service: a plain diffusers pipeline call (DPM++ SDE Karras scheduler built once, seeded) against
  ``GenerationService.generate()`` of the same image, without and with saving the PNG. Target <= 1.02.
- batch: seconds per image at batch 1/4/8 (one ``generate()`` of n images), and the ratio to batch 1.
- switch: the time ``configure`` takes when α or the shot changes (re-weight + re-fuse, nothing read
  from disk) against loading the LoRA file from disk each time. Target: < 20 ms.
- fixed α: seconds per image with a LoRA at fixed α (fused) against the base model. Target <= 1.02
  (the un-fused runtime peft LoRA is printed for reference).
- end to end: a generation after an α change against one at an unchanged α.
- peak memory (CUDA) of a batch-8 generation; compiled mode (``--compile``): compile time and the
  per-image time at the largest batch against eager.

``--sd15`` builds SD 1.5's UNet / VAE / CLIP-L text encoder from their configs with random weights on
the device (timings only; images are noise) and hands that pipeline to the service.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")


def sd15_pipeline(device, dtype):
    """SD 1.5's architecture with random weights (no download), built directly on ``device``."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from dreamshot.clip_tokenizer import write_clip_tokenizer
    from dreamshot.demo_model import SD15_SCHEDULER

    torch.manual_seed(0)
    with torch.device(device):
        unet, vae, text_encoder = _sd15_modules(UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTextConfig)
    tok_dir = write_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    tokenizer.model_max_length = 77
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def _sd15_modules(UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTextConfig):
    unet = UNet2DConditionModel(  # SD 1.5 unet/config.json
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(  # SD 1.5 vae/config.json
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14 text tower
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        num_hidden_layers=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    return unet, vae, text_encoder


def median_time(fn, repeats: int, sync=lambda: None) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns: dict, repeats: int, sync) -> dict:
    """Median seconds of each function, the variants taking turns (load changes hit all alike)."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd15", action="store_true", help="SD 1.5 architecture (random weights) instead of the tiny demo model")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels [64]")
    parser.add_argument("--steps", type=int, default=16, help="[16, the paper's setting]")
    parser.add_argument("--sampler", default="DPM++ SDE Karras")
    parser.add_argument("--rank", type=int, default=16, help="rank of the benchmark LoRAs [16]")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--switches", type=int, default=20, help="α/shot changes timed [20]")
    parser.add_argument("--batches", default="1,4,8", help="batch sizes timed per image [1,4,8]")
    parser.add_argument("--compile", action="store_true", help="also time compiled mode (torch.compile warm-up: minutes)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads [torch's default]; 1 is "
                        "steadier on a CPU shared with other jobs")
    return parser.parse_args(argv)


class Bench:
    """The studio, the service and its two benchmark LoRAs, plus timers."""

    def __init__(self, args, work: Path):
        import torch

        from dreamshot.generate.loras import LoraLibrary
        from dreamshot.generate.service import GenerationRequest, service
        from dreamshot.models import device_and_dtype
        from dreamshot.settings import Settings
        from dreamshot.studio import Studio
        from tests.generate_fixtures import random_lora

        self.args = args
        self.device, self.dtype = device_and_dtype()
        self.cuda = self.device.type == "cuda"
        self.sync = torch.cuda.synchronize if self.cuda else (lambda: None)
        self.studio = Studio.open(Settings(data_dir=work / "data", model="demo"))
        if args.sd15:
            t0 = time.perf_counter()
            self.studio.models._pipe = sd15_pipeline(self.device, self.dtype)  # benchmark only: the shared pipeline
            print(f"built SD 1.5 architecture (random weights) in {time.perf_counter() - t0:.1f}s")
        self.svc = service(self.studio)
        self.pipe = self.svc.pipe
        library = LoraLibrary(self.studio)
        self.files = {}
        for i, shot in enumerate(("close", "medium")):
            self.files[shot] = random_lora(self.pipe.unet, work / shot, seed=i, rank=args.rank)
            library.register(self.files[shot], name=shot, shot=shot, origin="trained")
        self.info = {s: library.get(s) for s in ("close", "medium")}
        self.req = GenerationRequest(prompt="a man walking on a bridge at dusk", width=args.size, height=args.size,
                                     steps=args.steps, sampler=args.sampler, seed=1234)

    def gen(self, req, **kw):
        return self.svc.generate(req, save=False, **kw)

    def describe(self) -> str:
        import torch

        n_params = sum(p.numel() for p in self.pipe.unet.parameters()) / 1e6
        gpu = f" ({torch.cuda.get_device_name()})" if self.cuda else ""
        return (f"model: {'SD 1.5 architecture' if self.args.sd15 else 'tiny demo'} (UNet {n_params:.1f} M params), "
                f"{self.device.type}{gpu} {str(self.dtype).replace('torch.', '')}, {self.args.size}px, "
                f"{self.args.steps} steps, {self.args.sampler}, LoRA rank {self.args.rank}, "
                f"torch threads {torch.get_num_threads()}")


def plain_vs_service(b: Bench) -> dict:
    """A plain diffusers call against generate() of the same image (base model, batch 1)."""
    import torch

    from dreamshot.generate.samplers import make_scheduler

    scheduler = make_scheduler(dict(b.pipe.scheduler.config), b.args.sampler, b.req.seed)
    req = b.req

    def plain():
        b.pipe.scheduler = scheduler
        scheduler.noise_sampler_seed = req.seed
        b.pipe(prompt=req.prompt, num_inference_steps=req.steps, guidance_scale=req.cfg, width=req.width,
               height=req.height, generator=torch.Generator("cpu").manual_seed(req.seed))

    def saved():
        [image] = b.svc.generate(req).images
        image.path  # noqa: B018  (waits for the file: the whole cost of a saved image)

    with b.svc.lock:
        b.svc.configure([])
    plain(), b.gen(req)
    out = interleaved({"plain": plain, "service": lambda: b.gen(req), "saved": saved}, b.args.repeats, b.sync)
    out["overhead"] = service_overhead(b, req)
    return out


def service_overhead(b: Bench, req) -> float:
    """Median seconds generate() spends outside its batch's pipeline call (checks, library, prompt,
    adapters, A1111 text): a difference within one call, so CPU load elsewhere hardly moves it."""
    from dreamshot.generate import batch as batching

    inside, outside = [], []
    real = batching.run_batch

    def timed(*a, **k):
        b.sync()
        t0 = time.perf_counter()
        images = real(*a, **k)
        b.sync()
        inside.append(time.perf_counter() - t0)
        return images

    batching.run_batch = timed
    try:
        for _ in range(b.args.repeats):
            b.sync()
            t0 = time.perf_counter()
            b.gen(req)
            b.sync()
            outside.append(time.perf_counter() - t0 - inside[-1])
    finally:
        batching.run_batch = real
    return statistics.median(outside)


def batch_times(b: Bench, sizes: list[int]) -> dict:
    """Seconds per image at each batch size (one generate() of n images in one batch)."""
    out = {}
    for n in sizes:
        req = b.req.replace(num_images=n)
        b.gen(req, batch_size=n)   # warm-up at this shape
        out[n] = median_time(lambda: b.gen(req, batch_size=n), max(2, b.args.repeats // 2), b.sync) / n
    return out


def switch_times(b: Bench) -> tuple[float, float]:
    """(α/shot switch, load-from-disk) seconds."""
    from safetensors.torch import load_file

    from dreamshot.generate.adapters import quiet_diffusers

    close, medium = b.info["close"], b.info["medium"]
    mixes = [[(close, 1.0)], [(close, 0.5)], [(medium, 1.0)], [(medium, 0.75)]]
    switch = []
    with b.svc.lock:
        for k in range(b.args.switches):
            b.sync()
            switch.append(b.svc.configure(mixes[k % len(mixes)]))
            b.sync()

    def reload_from_disk(k=[0]):
        k[0] += 1
        name = f"reload{k[0]}"
        with quiet_diffusers():
            b.pipe.load_lora_weights(load_file(str(b.files["close"])), adapter_name=name)
        b.pipe.set_adapters([name], adapter_weights=[0.75])
        b.pipe.delete_adapters(name)

    with b.svc.lock:
        b.svc.configure([])
        bank = b.svc.adapters.bank
        bank._attach()
        reload_s = median_time(reload_from_disk, max(3, b.args.repeats), b.sync)
        bank._detach()
    return statistics.median(switch), reload_s


def fused_times(b: Bench) -> tuple[float, float, float]:
    """(base, LoRA fused at fixed α, un-fused runtime peft LoRA) seconds per image."""
    from dreamshot.generate import batch as batching
    from dreamshot.generate.results import Job

    lora_req = b.req.replace(shot="close", alpha=0.8)
    prompt = b.svc.plan(lora_req)[0]
    name = b.svc.adapters.name(b.info["close"])
    items = [batching.Item(0, lora_req, prompt, lora_req.seed)]

    def run():
        scheduler = b.svc.scheduler(lora_req.sampler, [lora_req.seed])
        batching.run_batch(b.pipe, scheduler, items, Job(), lambda step, total: None)

    def base():
        b.svc.configure([])
        run()

    def fused():
        b.svc.configure([(b.info["close"], 0.8)])
        run()

    def unfused():
        b.svc.configure([])
        bank = b.svc.adapters.bank
        bank._attach()                          # the peft wrappers back, computing the LoRA per call
        b.pipe.set_adapters([name], adapter_weights=[0.8])
        try:
            run()
        finally:
            bank._detach()

    with b.svc.lock:
        t = interleaved({"base": base, "fused": fused, "unfused": unfused}, b.args.repeats, b.sync)
    return t["base"], t["fused"], t["unfused"]


def end_to_end(b: Bench) -> tuple[float, float]:
    """generate() at an unchanged α against generate() right after an α change."""
    lora_req = b.req.replace(shot="close", alpha=0.8)
    same, changed = [], []
    alphas = iter([0.6, 0.9] * b.args.repeats)
    b.gen(lora_req)
    for _ in range(b.args.repeats):
        t0 = time.perf_counter()
        b.gen(lora_req)
        same.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b.gen(b.req.replace(shot="close", alpha=next(alphas)))
        changed.append(time.perf_counter() - t0)
        b.gen(lora_req)  # back to the fixed α, untimed
    return statistics.median(same), statistics.median(changed)


def peak_memory(b: Bench, n: int) -> float | None:
    """Peak GPU memory (GiB) of a batch-n generation; None on a CPU."""
    import torch

    if not b.cuda:
        return None
    torch.cuda.reset_peak_memory_stats()
    b.gen(b.req.replace(num_images=n), batch_size=n)
    return torch.cuda.max_memory_allocated() / 2**30


def compiled(b: Bench, n: int) -> tuple[float, float]:
    """(compile + warm-up seconds, compiled seconds per image at batch n)."""
    req = b.req.replace(num_images=n)
    warm = b.svc.compile(req)
    per_image = median_time(lambda: b.gen(req, batch_size=n), max(2, b.args.repeats // 2), b.sync) / n
    return warm, per_image


def say(text: str) -> None:
    print(text, flush=True)   # each figure as soon as it is measured: a time limit keeps the ones before


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.batches.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        b = Bench(args, work)
        say(b.describe())
        b.gen(b.req.replace(shot="close"))            # warm up both adapters and both code paths
        b.gen(b.req.replace(shot="medium", alpha=0.5))
        b.gen(b.req)

        pv = plain_vs_service(b)
        say(f"plain diffusers call, batch 1:         {pv['plain']:8.3f} s/image")
        say(f"service generate(), batch 1:           {pv['service']:8.3f} s/image  -> ratio {pv['service'] / pv['plain']:.3f} (target <= 1.02)")
        say(f"service generate() + PNG saved:        {pv['saved']:8.3f} s/image  -> ratio {pv['saved'] / pv['plain']:.3f}")
        say(f"generate() outside the pipeline call:  {pv['overhead'] * 1000:8.2f} ms  (checks, library, prompt, A1111 text)")
        per_image = batch_times(b, sizes)
        for n in sizes:
            say(f"batch {n:<2} through the service:        {per_image[n]:8.3f} s/image  -> {per_image[n] / per_image[sizes[0]]:.3f} of batch {sizes[0]}")
        switch_s, reload_s = switch_times(b)
        say(f"switch α/shot (re-weight + re-fuse):   {switch_s * 1000:8.2f} ms  (median of {args.switches}; target < 20 ms)")
        say(f"load the LoRA from disk each time:     {reload_s * 1000:8.2f} ms  -> switching is {reload_s / switch_s:.1f}x cheaper")
        base_s, fixed_s, unfused_s = fused_times(b)
        say(f"base model:                            {base_s:8.3f} s/image")
        say(f"LoRA at fixed α (fused):               {fixed_s:8.3f} s/image  -> ratio {fixed_s / base_s:.3f} (target <= 1.02)")
        say(f"LoRA un-fused (runtime peft, ref.):    {unfused_s:8.3f} s/image  -> ratio {unfused_s / base_s:.3f}")
        same_s, changing_s = end_to_end(b)
        say(f"generate(), α unchanged:               {same_s:8.3f} s/image")
        say(f"generate(), α changed before it:       {changing_s:8.3f} s/image  -> {(changing_s - same_s) * 1000:+.1f} ms")
        peak = peak_memory(b, max(sizes))
        if peak is not None:
            say(f"peak GPU memory, batch {max(sizes)}:             {peak:8.2f} GiB")
        ok = switch_s < 0.020 and fixed_s / base_s <= 1.02 and pv["service"] / pv["plain"] <= 1.02
        say("RESULT: " + ("targets met" if ok else "a target was missed (timings on a shared CPU are noisy: rerun)"))
        if args.compile:
            warm, comp = compiled(b, max(sizes))
            say(f"compiled mode: warm-up (compile incl.) {warm:8.1f} s")
            say(f"compiled, batch {max(sizes)}:                    {comp:8.3f} s/image  -> {comp / per_image[max(sizes)]:.3f} of eager")
        b.studio.close()
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
