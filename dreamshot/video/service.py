"""The Video feature's logic (no gradio): shot clips, camera moves, shot-to-shot transitions (with a
judge-steered automatic mode) and restyling a video. ``service(studio)`` is the studio's one
``VideoService``; it keeps the motion adapter, the motion pipeline and the restyle pipelines, built
once from the already-loaded base pipeline.

A clip: ``ClipRequest`` -> ``check`` (the generation checks plus frames, fps, camera move) -> under
the generation lock: base weights restored, motion pipeline built (once), shot/camera LoRAs loaded
(once) into the motion UNet and activated with constant or per-frame weights (``frame_lora``), a
fresh scheduler from the sampler and seed -> ``ClipResult`` (frames + A1111-style parameters) ->
``save_clip`` writes MP4 (exactly N frames), GIF and the parameters beside them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dreamshot.errors import InvalidInput
from dreamshot.video import base, clip as clips, frame_lora, media, schedule

log = logging.getLogger(__name__)

DEFAULT_SAMPLER = "DDIM"           # AnimateDiff's documented scheduler
MAX_FPS = 60
CAMERA_STRENGTH = (0.0, 1.5)
# AnimateDiff's motion modules were trained with linear betas.
SCHEDULER_OVERRIDES = {"beta_schedule": "linear", "clip_sample": False, "timestep_spacing": "linspace",
                       "steps_offset": 1}


@dataclass
class ClipRequest:
    """One clip. ``shot`` is a shot type or LoRA name (None = base model); with ``to_shot`` it is a
    transition from ``shot`` to ``to_shot`` along ``keyframes`` or ``start`` -> ``end``."""
    prompt: str
    shot: str | None = None
    alpha: float = 1.0
    camera: str | None = None
    camera_strength: float = 1.0
    frames: int = 16
    fps: float = 8.0
    use_template: bool = True
    negative_prompt: str = ""
    sampler: str = DEFAULT_SAMPLER
    steps: int = 20
    cfg: float = 7.5
    width: int = 512
    height: int = 512
    seed: int = -1
    motion_adapter: str | None = None
    to_shot: str | None = None
    start: float = 0.0
    end: float = 1.0
    keyframes: str = ""

    def replace(self, **changes) -> "ClipRequest":
        return dataclasses.replace(self, **changes)

    def generation_request(self):
        return base.GenerationRequest(
            prompt=self.prompt, shot=self.shot, alpha=self.alpha, use_template=self.use_template,
            negative_prompt=self.negative_prompt, sampler=self.sampler, steps=self.steps, cfg=self.cfg,
            width=self.width, height=self.height, seed=self.seed)


@dataclass
class ClipResult:
    request: ClipRequest
    prompt: str
    frames: list                          # PIL images
    parameters: str                       # A1111-style text (+ Frames, FPS, Motion adapter, ...)
    t: list | None = None                 # transition: share of the target shot per frame
    judged: list | None = None            # automatic mode: judge's probabilities per frame
    history: list = field(default_factory=list)   # automatic mode: (t, judged share) per round
    judge: str | None = None              # automatic mode: which judge (probe or zero-shot, its CLIP)
    seconds: float = 0.0
    folder: Path | None = None

    @property
    def judged_shots(self) -> list | None:
        return [schedule.top_shot(p) for p in self.judged] if self.judged else None


class VideoService:
    def __init__(self, studio):
        self.studio = studio
        self._lock = threading.Lock()            # guards building the pipelines below
        self._adapter_source: str | None = None
        self._motion = None                      # AnimateDiffPipeline
        self._loras: frame_lora.FrameLoras | None = None
        self.restyle_pipes = {}                  # restyle.py: "img2img" / ("controlnet", source) -> pipeline

    # ---- models ---------------------------------------------------------------------------------
    @property
    def gen(self):
        return base.generation(self.studio)

    def default_motion_adapter(self) -> str:
        env = os.environ.get("DREAMSHOT_MOTION_ADAPTER", "").strip()
        if env:
            return env
        return clips.DEMO if self.studio.models.status.is_demo else clips.DEFAULT_MOTION_ADAPTER

    def motion_pipeline(self, source: str | None = None):
        """The AnimateDiff pipeline for motion adapter ``source`` (built once; a new source replaces
        it). Callers hold the generation lock with the base weights clean."""
        source = (source or "").strip() or self.default_motion_adapter()
        with self._lock:
            if self._motion is None or source != self._adapter_source:
                pipe = base.base_pipeline(self.studio)
                adapter = clips.load_motion_adapter(source, pipe.unet)
                self._motion = clips.motion_pipeline(pipe, adapter)
                self._loras = frame_lora.FrameLoras(self._motion.unet)
                self._adapter_source = source
                self._scheduler_config = dict(pipe.scheduler.config)
        return self._motion

    def scheduler_config(self) -> dict:
        return getattr(self, "_scheduler_config", None) or dict(base.base_pipeline(self.studio).scheduler.config)

    def _shot_adapter(self, info) -> str:
        from safetensors.torch import load_file

        name = "shot_" + re.sub(r"\W", "_", info.name)[:40] + "_" + info.sha256[:8]
        if name not in self._loras.loaded:
            self._loras.load(name, load_file(str(info.path)), label=repr(info.name))
        return name

    def _camera_adapter(self, move: str, pipe) -> str:
        name = "camera_" + move.replace("-", "_")
        if name not in self._loras.loaded:
            if self._adapter_source == clips.DEMO:
                source = clips.demo_camera_lora(pipe.unet, move)
            else:
                source = clips.camera_source(self.studio.settings.models_dir, move)
            self._loras.load(name, source, label=f"camera move {move!r}")
        return name

    # ---- requests ------------------------------------------------------------------------------
    def check(self, req: ClipRequest) -> ClipRequest:
        checked = base.check_inputs(req.generation_request())
        try:
            frames, fps = int(req.frames), float(req.fps)
            strength = float(req.camera_strength)
        except (TypeError, ValueError):
            raise InvalidInput("Frames must be a whole number; fps and camera strength numbers.") from None
        if not 2 <= frames <= clips.MAX_CLIP_FRAMES:
            raise InvalidInput(f"Frames must be between 2 and {clips.MAX_CLIP_FRAMES} (got {frames}).")
        if not 1 <= fps <= MAX_FPS:
            raise InvalidInput(f"Frame rate must be between 1 and {MAX_FPS} fps (got {fps:g}).")
        if not CAMERA_STRENGTH[0] <= strength <= CAMERA_STRENGTH[1]:
            raise InvalidInput(f"Camera strength must be between 0 and {CAMERA_STRENGTH[1]:g}.")
        to_shot = (req.to_shot or "").strip() or None
        if to_shot and not checked.shot:
            raise InvalidInput("A transition needs both shot types: From and To (--from and --to).")
        return req.replace(prompt=checked.prompt, shot=checked.shot, alpha=checked.alpha, frames=frames,
                           fps=fps, camera=clips.camera_move(req.camera), camera_strength=strength,
                           negative_prompt=checked.negative_prompt, sampler=checked.sampler,
                           steps=checked.steps, cfg=checked.cfg, width=checked.width, height=checked.height,
                           seed=base.random_seed() if checked.seed == -1 else checked.seed, to_shot=to_shot)

    def plan(self, req: ClipRequest) -> tuple[str, list, list | None]:
        """(prompt, [(LoraInfo, α)], t per frame or None) of a checked request."""
        gen = self.gen
        if not req.shot:
            return req.prompt, [], None
        if req.to_shot:
            lead, target = gen.resolve_lora(req.shot), gen.resolve_lora(req.to_shot)
            if lead.name == target.name:
                raise InvalidInput(f"A transition goes from one shot LoRA to another: from and to are both "
                                   f"{lead.name!r}. For one shot type, make a shot clip.")
            t = schedule.schedule(req.frames, start=req.start, end=req.end, keyframes=req.keyframes)
            return self.transition_prompts(req, lead, target)[0], [(lead, req.alpha), (target, req.alpha)], t
        prompt, mix = self.shot_prompt(req.shot, req.prompt, req.use_template, req.alpha)
        return prompt, mix, None

    def transition_prompts(self, req: ClipRequest, lead, target) -> tuple[str, str]:
        """The prompts of the first and the last frame (the template with each shot's phrase, as in
        training); frames in between blend their text embeddings with the LoRA weights' schedule."""
        prompts = []
        for info in (lead, target):
            use = req.use_template and info.shot
            prompts.append(self.studio.project.prompt(info.shot, req.prompt) if use else req.prompt)
        return prompts[0], prompts[1]

    def shot_prompt(self, shot: str | None, caption: str, use_template: bool, alpha: float) -> tuple[str, list]:
        """(prompt, [(LoraInfo, α)]): the project's template with the LoRA's shot phrase, as in training."""
        if not shot:
            return caption, []
        lead = self.gen.resolve_lora(shot)
        prompt = self.studio.project.prompt(lead.shot, caption) if use_template and lead.shot else caption
        return prompt, [(lead, alpha)]

    # ---- clips ---------------------------------------------------------------------------------
    def clip(self, req: ClipRequest, job=None, *, judge=None, rounds: int = 3, save: bool = True) -> ClipResult:
        """A shot clip, a camera-move clip or a transition. With ``judge`` (transitions only) the
        weights are steered frame by frame over ``rounds`` generations (automatic mode)."""
        req = self.check(req)
        prompt, mix, t = self.plan(req)
        if judge is not None and t is None:
            raise InvalidInput("The automatic mode steers a transition: choose a 'to' shot type.")
        t0 = time.perf_counter()
        history, judged = [], None
        target = list(t) if t is not None else None
        total = rounds if judge is not None else 1
        for round_index in range(total):
            span = (round_index / total, (round_index + 1) / total)
            frames = self._run(req, prompt, mix, t, job, span)
            if judge is None:
                break
            judged = [dict(p) for p in judge(frames)]
            share = schedule.share_of(judged, mix[0][0].shot or mix[0][0].name, mix[1][0].shot or mix[1][0].name)
            history.append({"t": [round(x, 4) for x in t], "judged_share": [round(x, 4) for x in share]})
            if round_index < total - 1:
                t = schedule.steer(t, target, share)
        result = ClipResult(req, prompt, frames, self.parameters(req, prompt, mix, t), t=t, judged=judged,
                            history=history, seconds=time.perf_counter() - t0,
                            judge=getattr(judge, "description", "custom judge") if judge is not None else None)
        if save:
            save_clip(result, self.output_folder(req.seed))
        return result

    def _run(self, req: ClipRequest, prompt: str, mix: list, t, job, span) -> list:
        import torch

        gen = self.gen
        if not gen.lock.acquire(blocking=False):
            _report(job, span[0], "waiting for another generation to finish…")
            gen.lock.acquire()
        try:
            _check_cancel(job)
            base.clean_base(gen)
            pipe = self.motion_pipeline(req.motion_adapter)
            weights = {}
            if t is not None:
                a, b = schedule.lora_weights(t, req.alpha)
                weights = {self._shot_adapter(mix[0][0]): a, self._shot_adapter(mix[1][0]): b}
            elif mix:
                weights = {self._shot_adapter(mix[0][0]): req.alpha}
            if req.camera and req.camera_strength > 0:
                weights[self._camera_adapter(req.camera, pipe)] = req.camera_strength
            pipe.scheduler = base.scheduler(self.scheduler_config(), req.sampler, req.seed, **SCHEDULER_OVERRIDES)
            with self._loras.active(weights, req.frames), self._text(pipe, req, mix, t), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*(ta>=t0|Should have).*")
                out = pipe(prompt=prompt, negative_prompt=req.negative_prompt or None, num_frames=req.frames,
                           width=req.width, height=req.height, num_inference_steps=req.steps,
                           guidance_scale=req.cfg, generator=torch.Generator("cpu").manual_seed(req.seed),
                           callback_on_step_end=_step_callback(job, req.steps, span), output_type="pil")
        finally:
            gen.lock.release()
        _check_cancel(job)
        return list(out.frames[0])

    def _text(self, pipe, req: ClipRequest, mix: list, t):
        """Per-frame prompt blend for a transition whose two prompts differ; else nothing."""
        if t is None or not req.to_shot:
            return contextlib.nullcontext()
        first, last = self.transition_prompts(req, mix[0][0], mix[1][0])
        if first == last:
            return contextlib.nullcontext()
        import torch

        with torch.no_grad():
            cond = [pipe.encode_prompt(p, pipe.unet.device, 1, False)[0] for p in (first, last)]
        return frame_lora.per_frame_text(pipe.unet, cond[0], cond[1], t)

    def transition_judge(self, req: ClipRequest, clip_spec: str | None = None):
        """The Evaluate feature's shot-type judge over the transition's two shot types."""
        from dreamshot.video.judging import evaluate_judge

        req = self.check(req)
        if not req.to_shot:
            raise InvalidInput("The automatic mode steers a transition: choose a 'to' shot type.")
        _, mix, _ = self.plan(req)
        return evaluate_judge(self.studio, [info.shot or info.name for info, _ in mix], clip_spec)

    def parameters(self, req: ClipRequest, prompt: str, mix: list, t) -> str:
        greq = req.generation_request().replace(shot=req.shot if not req.to_shot else None)
        text = self.gen.parameters_text(greq, prompt, mix, req.seed)
        extra = {"Frames": req.frames, "FPS": f"{req.fps:g}", "Motion adapter": self._adapter_source,
                 "Camera": f"{req.camera} {req.camera_strength:g}" if req.camera else None,
                 "Transition": (f"{req.shot}->{req.to_shot} [" + " ".join(f"{x:.2f}" for x in t) + "]")
                 if req.to_shot and t is not None else None}
        return text + "".join(f", {k}: {v}" for k, v in extra.items() if v is not None)

    def output_folder(self, seed: int) -> Path:
        now = datetime.now(timezone.utc)
        return Path(self.studio.settings.outputs_dir) / "video" / now.strftime("%Y-%m-%d") / f"{now:%H%M%S-%f}-{seed}"

    # ---- restyle -------------------------------------------------------------------------------
    def restyle(self, req, job=None):
        from dreamshot.video import restyle

        return restyle.run(self, req, job)


def save_clip(result: ClipResult, folder: Path) -> ClipResult:
    """clip.mp4 (exactly N frames, the request's fps), clip.gif, clip.txt (parameters), clip.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    media.write_mp4(result.frames, result.request.fps, folder / "clip.mp4", comment=result.parameters)
    media.write_gif(result.frames, result.request.fps, folder / "clip.gif", comment=result.parameters)
    (folder / "clip.txt").write_text(result.parameters + "\n", encoding="utf-8")
    info = {"parameters": result.parameters, "request": dataclasses.asdict(result.request),
            "prompt": result.prompt, "t": result.t, "judge": result.judge, "judged_shots": result.judged_shots,
            "judged": result.judged, "rounds": result.history, "seconds": round(result.seconds, 3)}
    (folder / "clip.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    result.folder = folder
    return result


def _report(job, fraction: float, text: str) -> None:
    if job is not None:
        job.report(fraction, text)


def _check_cancel(job) -> None:
    if job is not None and job.cancelled:
        raise base.Cancelled("Stopped.")


def _step_callback(job, steps: int, span):
    lo, hi = span

    def on_step_end(pipeline, step, timestep, kwargs):
        total = max(getattr(pipeline, "num_timesteps", steps) or steps, 1)
        _report(job, lo + (hi - lo) * (step + 1) / total, f"step {step + 1}/{total}")
        if job is not None and job.cancelled:
            pipeline._interrupt = True
        return kwargs
    return on_step_end


def service(studio) -> VideoService:
    return studio.service(VideoService)
