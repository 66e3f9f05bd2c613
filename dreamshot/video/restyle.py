"""Restyle a video frame by frame (the Stanford study's per-frame transfer) and measure its flicker.

Input video (PyAV) -> frames fitted into width×height -> each frame through img2img, or ControlNet
(canny edges of the frame, OpenCV, or its depth map from the depth model) + img2img, with the shot
LoRA merged into the shared pipeline and a
fixed seed (the same noise for every frame) or a per-frame seed (seed + frame index) -> MP4 with the
original frame rate and audio -> ``metrics.json`` (PSNR, T-SSIM, warping error; ``metrics.temporal_metrics``)
and a per-frame plot.

Long videos run in chunks of ``chunk`` frames; each finished frame is a PNG under ``<out>/frames/``
and ``<out>/restyle.json`` records the settings' key. Running the same restyle into the same folder
again resumes where it stopped (cancel, crash); other settings in a used folder are refused unless
``restart``. The generation lock is held per chunk, so Generate requests interleave.

The ControlNets and the depth model are Generate's (``dreamshot.generate.control.controls``): one
loader, loaded once per studio, the same defaults and overrides (``--controlnet``, then
``DREAMSHOT_CONTROLNET_CANNY`` / ``_DEPTH``, the older ``DREAMSHOT_CONTROLNET`` for canny, the
studio setting, the v1.1 default; ``demo`` on the demo model; ``DREAMSHOT_DEPTH_MODEL``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from dreamshot.errors import InvalidInput
from dreamshot.generate import control as controlnet
from dreamshot.generate.control_models import controls
from dreamshot.video import base, media, metrics

CONTROLS = ("none", "canny", "depth")
SEED_POLICIES = ("fixed", "per-frame")
MAX_CHUNK = 64


@dataclass
class RestyleRequest:
    video: Path
    prompt: str = "a cinematic film still"
    shot: str | None = None
    alpha: float = 1.0
    use_template: bool = True
    negative_prompt: str = ""
    control: str = "none"            # none = img2img; canny/depth = ControlNet on the frame's edges/depth
    strength: float = 0.6            # img2img denoising strength
    seed_policy: str = "fixed"
    seed: int = -1
    sampler: str = "DDIM"
    steps: int = 16
    cfg: float = 6.0
    width: int = 512                 # frames are fitted inside width×height, aspect kept
    height: int = 512
    max_frames: int | None = None
    max_seconds: float = media.MAX_SECONDS
    max_bytes: int = media.MAX_BYTES
    chunk: int = 8
    controlnet: str | None = None    # ControlNet id or folder (None: the kind's default, see above)
    out_dir: Path | None = None
    restart: bool = False


@dataclass
class RestyleResult:
    folder: Path
    video: Path
    metrics: dict
    plot: Path
    frames: int
    fps: float
    resumed_from: int                # frames already done when this run started


def check(req: RestyleRequest):
    control = (req.control or "none").strip().lower()
    if control == "img2img":
        control = "none"
    if control not in CONTROLS:
        raise InvalidInput(f"Unknown control {req.control!r}; choose one of: {', '.join(CONTROLS)}.")
    if req.seed_policy not in SEED_POLICIES:
        raise InvalidInput(f"Seed policy must be one of: {', '.join(SEED_POLICIES)}.")
    if not 0.0 < float(req.strength) <= 1.0:
        raise InvalidInput(f"Strength must be above 0 and at most 1 (got {req.strength}).")
    if not 1 <= int(req.chunk) <= MAX_CHUNK:
        raise InvalidInput(f"Chunk must be between 1 and {MAX_CHUNK} frames.")
    if req.max_frames is not None and int(req.max_frames) < 2:
        raise InvalidInput("Max frames (--max-frames) must be at least 2: the metrics compare consecutive "
                           "frames.")
    greq = base.check_inputs(base.GenerationRequest(
        prompt=req.prompt, shot=req.shot, alpha=req.alpha, use_template=req.use_template,
        negative_prompt=req.negative_prompt, sampler=req.sampler, steps=req.steps, cfg=req.cfg,
        width=req.width, height=req.height, seed=req.seed))
    return control, greq                 # seed -1 stays -1 here: ``run`` resolves it (resume or random)


def fit_inside(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The video's size scaled to fit ``box_w`` × ``box_h`` with its aspect ratio, each side rounded
    to the nearest multiple of 8 (SD's VAE makes latents 8× smaller), a tie upwards, at least 8:
    640×360 in a 64 px box is 64×40 (the exact 64×36 lies halfway between 32 and 40; 40 is the
    smaller distortion, 1.6 against 2.0 for 1.78), never the 64×64 a 64 px floor on each side made."""
    scale = min(box_w / width, box_h / height)
    return _multiple_of_8(width * scale), _multiple_of_8(height * scale)


def _multiple_of_8(side: float) -> int:
    return max(8, int(side / 8 + 0.5) * 8)


def run(vsvc, req: RestyleRequest, job=None) -> RestyleResult:
    control, greq = check(req)
    info = media.probe(Path(req.video), media.Limits(max_seconds=float(req.max_seconds), max_bytes=int(req.max_bytes)),
                       max_frames=int(req.max_frames) if req.max_frames else None)
    total = min(info.frames, int(req.max_frames)) if req.max_frames else info.frames
    size = fit_inside(info.width, info.height, greq.width, greq.height)
    prompt, mix = vsvc.shot_prompt(greq.shot, greq.prompt, greq.use_template, greq.alpha)
    models = controls(vsvc.studio)
    source = models.source(control, req.controlnet) if control != "none" else None
    depth = models.depth_source() if control == "depth" else None
    if source:   # a missing ControlNet or depth model is refused before any folder is written
        models.controlnet(source)
    if depth:
        models.depth(depth)
    settings = {"video": _identity(info.path), "prompt": prompt, "loras": [[i.name, i.sha256, w] for i, w in mix],
                "control": control, "controlnet": source,
                "strength": float(req.strength), "seed_policy": req.seed_policy, "seed": greq.seed,
                "sampler": greq.sampler, "steps": greq.steps, "cfg": greq.cfg, "size": size, "frames": total,
                "negative": greq.negative_prompt}
    if depth:
        settings["depth_model"] = depth
    root = vsvc.output_folder(0).parent.parent / "restyle"
    if greq.seed == -1:
        settings["seed"] = _unfinished_seed(settings, [Path(req.out_dir)] if req.out_dir else _folders(root))
        if settings["seed"] is None:
            settings["seed"] = base.random_seed()
        greq = greq.replace(seed=settings["seed"])
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    folder = Path(req.out_dir) if req.out_dir else root / key[:16]
    frames_dir = _prepare(folder, key, settings, restart=req.restart)
    done_before = len(list(frames_dir.glob("*.png")))
    pending = []
    decoded = 0
    for index, image in media.read_frames(info.path, count=total):
        decoded += 1
        if not (frames_dir / f"{index:06d}.png").exists():
            pending.append((index, image.resize(size)))
        if len(pending) >= int(req.chunk):
            _chunk(vsvc, pending, prompt, mix, control, settings, req, greq, frames_dir, job, decoded, total)
            pending = []
    if pending:
        _chunk(vsvc, pending, prompt, mix, control, settings, req, greq, frames_dir, job, decoded, total)
    return _finish(folder, frames_dir, info, decoded, size, settings, done_before)


def compare_seed_policies(vsvc, req: RestyleRequest, job=None) -> dict:
    """Restyle twice - fixed seed and per-frame seed, same everything else - into ``<out>/fixed`` and
    ``<out>/per-frame``; writes ``<out>/comparison.json`` (each policy's clip means). Returns
    {policy: RestyleResult}."""
    from dataclasses import replace

    seed = req.seed if req.seed != -1 else base.random_seed()
    root = Path(req.out_dir) if req.out_dir else None
    results = {}
    for policy in SEED_POLICIES:
        out = root / policy if root else None
        results[policy] = run(vsvc, replace(req, seed_policy=policy, seed=seed, out_dir=out), job)
    folder = root or results["fixed"].folder.parent
    summary = {policy: {k: r.metrics[k]["mean"] for k in metrics.KEYS} for policy, r in results.items()}
    summary["input"] = results["fixed"].metrics["input"]
    (folder / "comparison.json").write_text(json.dumps(summary, indent=2))
    return results


def _folders(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []


def _unfinished_seed(settings: dict, folders: list[Path]) -> int | None:
    """The seed of the newest stopped restyle (frames missing) whose settings are ``settings`` but for
    the seed: with seed -1 ("random"), running the same restyle again resumes it instead of starting
    over with a new random seed."""
    wanted = json.loads(json.dumps({k: v for k, v in settings.items() if k != "seed"}))
    found = []
    for folder in folders:
        try:
            state = json.loads((folder / "restyle.json").read_text())
        except (OSError, ValueError):
            continue
        old = state.get("settings") or {}
        if {k: v for k, v in old.items() if k != "seed"} != wanted or not isinstance(old.get("seed"), int):
            continue
        if (folder / "metrics.json").is_file():
            continue                           # finished: a new random seed makes a new restyle
        found.append(((folder / "restyle.json").stat().st_mtime, old["seed"]))
    return max(found)[1] if found else None


def _identity(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
    return {"name": path.name, "bytes": path.stat().st_size, "head_sha256": digest.hexdigest()}


def _prepare(folder: Path, key: str, settings: dict, *, restart: bool) -> Path:
    state_file = folder / "restyle.json"
    frames_dir = folder / "frames"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if state.get("key") != key:
            if not restart:
                raise InvalidInput(f"{folder} holds a restyle with other settings; choose another output "
                                   "folder, or restart (which deletes its frames).")
            shutil.rmtree(frames_dir, ignore_errors=True)
    elif frames_dir.exists() and any(frames_dir.iterdir()) and not restart:
        raise InvalidInput(f"{frames_dir} is not empty and is not a restyle; choose another output folder.")
    frames_dir.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"key": key, "settings": settings}, indent=2))
    return frames_dir


def _chunk(vsvc, pending, prompt, mix, control, settings, req, greq, frames_dir, job, decoded, total):
    import torch

    gen = vsvc.gen
    _check_cancel(job, frames_dir, total)
    with gen.lock:
        _check_cancel(job, frames_dir, total)
        pipe = _pipeline(vsvc, control, settings["controlnet"])
        base.merge_loras(gen, mix)
        pipe.scheduler = base.scheduler(vsvc.scheduler_config(), greq.sampler, greq.seed)
        seeds = [greq.seed if req.seed_policy == "fixed" else greq.seed + i for i, _ in pending]
        kwargs = dict(prompt=[prompt] * len(pending), image=[im for _, im in pending],
                      negative_prompt=[greq.negative_prompt] * len(pending) if greq.negative_prompt else None,
                      strength=float(req.strength), num_inference_steps=greq.steps, guidance_scale=greq.cfg,
                      generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                      callback_on_step_end=_step_callback(job, decoded, total))
        if control == "canny":
            kwargs["control_image"] = [controlnet.canny(im) for _, im in pending]
        elif control == "depth":
            models = controls(vsvc.studio)
            kwargs["control_image"] = controlnet.depth_maps(models.depth(settings["depth_model"]),
                                                            [im for _, im in pending])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(ta>=t0|Should have).*")
            out = pipe(**kwargs)
    if job is not None and job.cancelled:
        _check_cancel(job, frames_dir, total)
    for (index, _), image in zip(pending, out.images):
        tmp = frames_dir / f"{index:06d}.png.part"
        image.save(tmp, format="PNG")
        tmp.replace(frames_dir / f"{index:06d}.png")
    if job is not None:
        job.report(decoded / max(total, 1), f"frame {decoded}/{total}")


def _check_cancel(job, frames_dir: Path, total: int) -> None:
    if job is not None and job.cancelled:
        done = len(list(frames_dir.glob("*.png")))
        raise base.Cancelled(f"Stopped after {done}/{total} frames; run the same restyle again to resume.")


def _step_callback(job, decoded: int, total: int):
    def on_step_end(pipeline, step, timestep, kwargs):
        if job is not None:
            steps = max(getattr(pipeline, "num_timesteps", 1) or 1, 1)
            job.report(decoded / max(total, 1), f"frames up to {decoded}/{total}: step {step + 1}/{steps}")
            if job.cancelled:
                pipeline._interrupt = True
        return kwargs
    return on_step_end


def _pipeline(vsvc, control: str, controlnet_source: str | None):
    """img2img / ControlNet-img2img on the base pipeline's components (built once per kind).
    Callers hold the generation lock."""
    key = "img2img" if control == "none" else ("controlnet", controlnet_source)
    if key in vsvc.restyle_pipes:
        return vsvc.restyle_pipes[key]
    from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionImg2ImgPipeline

    basep = base.base_pipeline(vsvc.studio)
    parts = dict(vae=basep.vae, text_encoder=basep.text_encoder, tokenizer=basep.tokenizer, unet=basep.unet,
                 scheduler=basep.scheduler, safety_checker=None, feature_extractor=None,
                 requires_safety_checker=False)
    if control == "none":
        pipe = StableDiffusionImg2ImgPipeline(**parts)
    else:
        net = controls(vsvc.studio).controlnet(controlnet_source)
        pipe = StableDiffusionControlNetImg2ImgPipeline(controlnet=net, **parts)
    pipe.set_progress_bar_config(disable=True)
    vsvc.restyle_pipes[key] = pipe
    return pipe


def _finish(folder, frames_dir, info, decoded, size, settings, done_before) -> RestyleResult:
    from PIL import Image

    paths = sorted(frames_dir.glob("*.png"))[:decoded]
    if len(paths) < 2:
        raise InvalidInput("The video has fewer than two frames to restyle.")
    load = lambda: (Image.open(p).convert("RGB") for p in paths)  # noqa: E731 - streamed twice
    video = media.write_mp4(load(), info.fps, folder / "restyled.mp4", audio_from=info.path)
    inputs = (im for _, im in media.read_frames(info.path, count=len(paths)))
    result = metrics.temporal_metrics(load(), inputs)
    reference = metrics.temporal_metrics((im.resize(size) for _, im in media.read_frames(info.path, count=len(paths))))
    summary = {**result, "frames": len(paths), "fps": float(info.fps), "seed_policy": settings["seed_policy"],
               "seed": settings["seed"], "control": settings["control"],
               "input": {k: v["mean"] for k, v in reference.items()}}
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2))
    plot = folder / "metrics.png"
    metrics.plot(result, title=f"{info.path.name}: {settings['seed_policy']} seed, {settings['control']}").save(plot)
    return RestyleResult(folder, video, summary, plot, len(paths), float(info.fps), done_before)


def request_dict(req: RestyleRequest) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(req).items()}
