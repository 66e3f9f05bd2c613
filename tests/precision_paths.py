"""One short call of every GPU path, on a studio opened in one precision (issue 23). Each call returns
its images (a list of PIL images) or numbers, so a run in float16/bfloat16 can be compared with the
float32 run of the same seeds (``precision_checks``). Used by tests/test_precision_train.py, and by
``benchmarks/bench_sd15_paths.py`` at SD 1.5's full size and as the GPU smoke; needs no pytest.

A context ``Ctx`` holds the studio, the manifest of ``precision_models.build`` and the call's size.
"""

from __future__ import annotations

import gc
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

TRAIN_STEPS = 2


@dataclass
class Ctx:
    studio: object
    models: dict              # precision_models.build's manifest
    work: Path                # a folder for this studio's outputs
    px: int = 64
    steps: int = 2
    notes: dict = field(default_factory=dict)   # what a path measured besides its images


def open_studio(models: dict, dtype: str, work: Path):
    """A studio on ``models``' base model in ``dtype``, its library holding LoRAs 'close', 'medium' and
    embedding 'close_ti', the depth model set."""
    from dreamshot.generate.control import setting_key
    from dreamshot.generate.loras import LoraLibrary
    from dreamshot.generate.service import service
    from dreamshot.settings import Settings
    from dreamshot.studio import Studio

    data = Path(work) / f"data-{dtype}"
    studio = Studio.open(Settings(data_dir=data, model=models["base"], dtype=dtype))
    lib = LoraLibrary(studio)
    for shot, path in models["loras"].items():
        if not any(i.name == shot for i in lib.list()):
            lib.register(Path(path), name=shot, shot=shot, origin="trained")
    if not service(studio).embeddings_list():
        service(studio).upload_lora(Path(models["embedding"]), name="close_ti")
    studio.db.set_setting(setting_key("depth_model"), models["depth"])
    return studio


def _req(ctx: Ctx, **kw):
    from dreamshot.generate.service import GenerationRequest

    return GenerationRequest(**{"prompt": "a woman reading a letter", "width": ctx.px, "height": ctx.px,
                                "steps": ctx.steps, "seed": 7, **kw})


def _images(ctx: Ctx, **kw) -> list:
    from dreamshot.generate.service import service

    return [im.image for im in service(ctx.studio).generate(_req(ctx, **kw), save=False).images]


def _control(ctx: Ctx, kind: str):
    from PIL import Image, ImageDraw

    from dreamshot.generate.request import ControlRequest

    frame = Image.new("RGB", (ctx.px, ctx.px), (30, 40, 60))
    ImageDraw.Draw(frame).rectangle((ctx.px // 4, ctx.px // 5, ctx.px * 3 // 4, ctx.px * 2 // 3), fill=(220, 200, 90))
    return _images(ctx, control=ControlRequest(kind, frame, model=ctx.models["controlnet"]))


def storyboard(ctx: Ctx) -> list:
    from dreamshot.generate.service import service
    from dreamshot.generate.storyboard import storyboard as board

    return [p.image for p in board(service(ctx.studio), "medium | a lighthouse\nclose | a face", _req(ctx, prompt="-")).panels]


def compare_sweep(ctx: Ctx) -> list:
    from dreamshot.generate.service import service
    from dreamshot.generate.storyboard import alpha_sweep

    svc = service(ctx.studio)
    base, lora = svc.compare_with_base(_req(ctx, prompt="a dog", shot="close"), save=False)
    cells = alpha_sweep(svc, _req(ctx, prompt="a man"), ["close", "medium"], "0, 1").cells
    return [base.images[0].image, lora.images[0].image] + [c.image for row in cells for c in row]


def survey(ctx: Ctx) -> list:
    import sqlalchemy as sa

    from dreamshot import schema
    from dreamshot.survey import images
    from dreamshot.survey.build import SurveySpec
    from dreamshot.survey.service import service

    spec = SurveySpec(name="smoke", shots=["close", "medium"], pairs=2, per_participant=2, seed=3,
                      prompts=["a woman reading", "a man on a bridge"], steps=ctx.steps, width=ctx.px, height=ctx.px)
    service(ctx.studio).build(spec)
    t = schema.survey_pairs
    with ctx.studio.db.read() as conn:
        rows = conn.execute(sa.select(t.c.base_image, t.c.lora_image).order_by(t.c.position)).all()
    return [images.load(ctx.studio, p) for row in rows for p in row]


def evaluate(ctx: Ctx) -> dict:
    """CLIP-T and DINO means of a small evaluation (numbers, compared within 4u by the smoke)."""
    from dreamshot.evaluate.pairs import EvalOptions
    from dreamshot.evaluate.service import service

    out = ctx.work / "evaluate"
    shutil.rmtree(out, ignore_errors=True)
    res = service(ctx.studio).run(EvalOptions(
        out=str(out), frames=ctx.models["held_out"], clip_model=ctx.models["clip"], dino_model=ctx.models["dino"],
        pairs=2, width=ctx.px, height=ctx.px, steps=ctx.steps, batch=2, bootstrap=100, ablation=False,
        alpha_values=[1.0], alpha_subset=1, shots=["close", "medium"]))
    return {f"{k} α={a['alpha']:g}": a[k] for a in res["alpha_curve"] for k in ("clip_t", "dino")}


def _clip(ctx: Ctx, **kw) -> list:
    from dreamshot.video.service import ClipRequest, service

    req = ClipRequest(prompt="a woman on a bridge", motion_adapter=ctx.models["motion_adapter"], width=ctx.px,
                      height=ctx.px, steps=ctx.steps, frames=4, seed=11, use_template=False, **kw)
    return list(service(ctx.studio).clip(req, save=False).frames)


def restyle(ctx: Ctx) -> list:
    from PIL import Image

    from dreamshot.video.restyle import RestyleRequest
    from dreamshot.video.service import service

    video = ctx.work / "input.mp4"
    if not video.is_file():
        from labeling.clips import encode

        frames = [Image.new("RGB", (ctx.px, ctx.px), (40 * k, 90, 160)) for k in range(3)]
        video.write_bytes(encode(frames, 8))
    out = ctx.work / "restyle"
    shutil.rmtree(out, ignore_errors=True)
    req = RestyleRequest(video=video, out_dir=out, max_frames=2, chunk=2, width=ctx.px, height=ctx.px,
                         steps=max(ctx.steps, 4), seed=4, strength=0.75, shot="close", control="canny",
                         controlnet=ctx.models["controlnet"])
    result = service(ctx.studio).restyle(req)
    return [Image.open(p).convert("RGB") for p in sorted((result.folder / "frames").glob("*.png"))]


def train(ctx: Ctx, method: str) -> list:
    """A short run of ``method`` in the studio's precision (fp32 master weights under autocast; fp16
    with the loss scaler), then its result loaded into the studio and used once."""
    from dreamshot.generate.loras import LoraLibrary
    from training import config as tconfig
    from training.components import precision_for
    from training.trainer import trainer_class

    dataset = ctx.models["clips"] if method == "motion" else ctx.models["images"]
    out = ctx.work / f"run-{method}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = tconfig.preset("smoke", shot="close", dataset=dataset, base_model=ctx.models["base"], output_dir=str(out),
                         method=method, resolution=ctx.px, max_steps=TRAIN_STEPS, validation_steps=0,
                         checkpoint_steps=0, validation_inference_steps=ctx.steps, validation_seeds=[0],
                         validation_prompts=["a dog"], extract_rank=4, clip_frames=4, random_flip=False,
                         mixed_precision=precision_for("auto", ctx.studio.settings.dtype),
                         motion_adapter=ctx.models["motion_adapter"] if method == "motion" else "")
    trainer = trainer_class(method)(cfg)
    t0 = time.perf_counter()
    result = trainer.run()
    ctx.notes.update(train_seconds=round(time.perf_counter() - t0, 2), losses=result.losses,
                     precision=trainer.precision, scaler=type(trainer.accelerator.scaler).__name__
                     if trainer.accelerator.scaler is not None else None,
                     scale=trainer.accelerator.scaler.get_scale() if trainer.accelerator.scaler is not None else None,
                     master=sorted({str(p.dtype).replace("torch.", "") for p in trainer.params}),
                     optimizer_states=len(getattr(trainer.optimizer, "optimizer", trainer.optimizer).state),
                     train_peak_rss_gib=round(_peak_rss_gib(), 2))
    import torch

    if torch.cuda.is_available():
        ctx.notes["train_gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / (1 << 30), 2)
    del trainer, result       # in the studio the trainer is a process of its own: free it before generating
    gc.collect()
    name = f"{method}-{ctx.studio.settings.dtype}"
    from training.ti import embedding_stem

    stem = embedding_stem(cfg) if method == "ti" else cfg.run_name     # an embedding is named after its token
    file = out / (f"{stem}.safetensors" if method != "lora" else "pytorch_lora_weights.safetensors")
    lib = LoraLibrary(ctx.studio)      # (registering a name again replaces it)
    if method == "ti":
        lib.register(file, name=name, shot="close", origin="trained", kind="embedding", method="ti",
                     token=cfg.placeholder)
        return _images(ctx, embedding=name) + [im for im in _validation(out)]
    lib.register(file, name=name, shot="close", origin="trained", method=method)
    if method == "motion":
        return _clip(ctx, shot=name, alpha=1.0)
    return _images(ctx, shot=name, alpha=1.0) + [im for im in _validation(out)]


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def _validation(out: Path) -> list:
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in sorted((out / "samples").glob("*.png"))]


PATHS = {
    "generate LoRA α": lambda c: _images(c, shot="close", alpha=0.8),
    "blend": lambda c: _images(c, blend={"close": 0.6, "medium": 0.4}),
    "fused fixed α (again)": lambda c: _images(c, shot="close", alpha=0.8),
    "α switch": lambda c: _images(c, shot="close", alpha=0.3) + _images(c, shot="close", alpha=0.8),
    "TI embedding": lambda c: _images(c, embedding="close_ti"),
    "TI + LoRA": lambda c: _images(c, embedding="close_ti", shot="close", alpha=0.8),
    "ControlNet canny": lambda c: _control(c, "canny"),
    "ControlNet depth": lambda c: _control(c, "depth"),
    "ControlNet scribble": lambda c: _control(c, "scribble"),
    "storyboard": storyboard,
    "compare + α sweep": compare_sweep,
    "survey build": survey,
    "evaluate (CLIP/DINO)": evaluate,
    "video clip": lambda c: _clip(c, shot="close", alpha=0.8),
    "transition": lambda c: _clip(c, shot="medium", to_shot="close"),
    "restyle (canny)": restyle,
    "train lora": lambda c: train(c, "lora"),
    "train ti": lambda c: train(c, "ti"),
    "train full + extraction": lambda c: train(c, "full"),
    "train motion": lambda c: train(c, "motion"),
}
