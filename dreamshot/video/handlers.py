"""The Video tab's handlers: typed forms in, paths and text out - testable without a running app
(``tab.py`` only lays out components and wires these). No gradio here.

Results are copied to a temp folder outside the data folder (the data folder is never served).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

from dreamshot.errors import InvalidInput
from dreamshot.video import clip as clips
from dreamshot.video.base import Cancelled
from dreamshot.video.restyle import RestyleRequest
from dreamshot.video.service import ClipRequest, service

NONE = "none"
KEEP_TEMP_S = 3600


def _num(value, default, label, kind=float):
    if value is None or value == "":
        return default
    if kind is int:
        try:
            return int(str(value).strip())      # exact, also for seeds past a float's precision
        except ValueError:
            pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{label} must be a number.") from None
    if kind is not int:
        return number
    if not number.is_integer():                 # 8.5 frames became 8 without a word
        raise InvalidInput(f"{label} must be a whole number (got {value}).")
    return int(number)


def _choice(value) -> str | None:
    return None if value in (None, "", NONE) else str(value)


@dataclass
class ClipForm:
    """The shared clip settings (order = the tab's components)."""
    prompt: str = ""
    shot: str = NONE
    alpha: float = 1.0
    camera: str = NONE
    camera_strength: float = 1.0
    frames: int = 16
    fps: float = 8
    seed: str = "-1"
    negative: str = ""
    sampler: str = "DDIM"
    steps: int = 20
    cfg: float = 7.5
    width: int = 512
    height: int = 512
    motion_adapter: str = ""

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def request(self, **extra) -> ClipRequest:
        return ClipRequest(
            prompt=self.prompt or "", shot=_choice(self.shot), alpha=_num(self.alpha, 1.0, "α"),
            camera=_choice(self.camera), camera_strength=_num(self.camera_strength, 1.0, "Camera strength"),
            frames=_num(self.frames, 16, "Frames", int), fps=_num(self.fps, 8.0, "FPS"),
            seed=_num(self.seed, -1, "Seed", int), negative_prompt=self.negative or "",
            sampler=self.sampler or "DDIM", steps=_num(self.steps, 20, "Steps", int), cfg=_num(self.cfg, 7.5, "CFG"),
            width=_num(self.width, 512, "Width", int), height=_num(self.height, 512, "Height", int),
            motion_adapter=(self.motion_adapter or "").strip() or None, **extra)


@dataclass
class TransitionForm:
    from_shot: str = NONE
    to_shot: str = NONE
    start: float = 0.0
    end: float = 1.0
    keyframes: str = ""
    auto: bool = False
    rounds: int = 3
    judge_clip: str = ""

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class RestyleForm:
    video: str | None = None
    prompt: str = "a cinematic film still"
    shot: str = NONE
    alpha: float = 1.0
    control: str = "none"
    strength: float = 0.6
    seed_policy: str = "fixed"
    seed: str = "-1"
    max_frames: int = 48
    size: int = 512
    negative: str = ""
    sampler: str = "DDIM"
    steps: int = 16
    cfg: float = 6.0

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class Shown:
    video: str
    gif: str | None
    info: str
    parameters: str


def lora_label(info) -> str:
    """A shot LoRA in the clip/transition choices; LoRAs trained on clips (method "motion") say so."""
    trained = {"motion": ", motion-trained", "full": ", fine-tune extract"}.get(getattr(info, "method", "lora"), "")
    return f"{info.name} ({info.shot or 'no shot type'}{trained})"


class VideoHandlers:
    def __init__(self, studio):
        self.studio = studio
        self.root = Path(tempfile.mkdtemp(prefix="dreamshot-video-"))

    @property
    def svc(self):
        return service(self.studio)

    def lora_choices(self) -> list:
        return [("none (base model)", NONE)] + [(lora_label(i), i.name) for i in self.svc.gen.loras()]

    @staticmethod
    def camera_choices() -> list:
        return [NONE, *clips.CAMERA_MOVES]

    def clip(self, form: ClipForm, *, owner: str = "api", progress=None) -> Shown:
        svc = self.svc
        with svc.gen.job(owner, progress=progress) as job:
            result = svc.clip(form.request(), job)
        return self._shown(result, f"**{result.request.frames} frames** at {result.request.fps:g} fps, "
                                   f"seed {result.request.seed}, {result.seconds:.1f} s")

    def transition(self, form: ClipForm, t: TransitionForm, *, owner: str = "api", progress=None) -> Shown:
        svc = self.svc
        if not _choice(t.from_shot) or not _choice(t.to_shot):
            raise InvalidInput("Choose the shot LoRA at the first frame (from) and at the last frame (to).")
        req = form.request().replace(shot=_choice(t.from_shot), to_shot=_choice(t.to_shot),
                                     start=_num(t.start, 0.0, "Start"), end=_num(t.end, 1.0, "End"),
                                     keyframes=t.keyframes or "")
        rounds = _num(t.rounds, 3, "Rounds", int)
        with svc.gen.job(owner, progress=progress) as job:
            judge = None
            if t.auto:      # loading the judge's CLIP can take a while: say so
                job.report(0.0, "loading the shot-type judge (CLIP)…")
                judge = svc.transition_judge(req, (t.judge_clip or "").strip() or None)
            result = svc.clip(req, job, judge=judge, rounds=rounds)
        info = (f"**{req.shot} → {req.to_shot}**, {result.request.frames} frames, seed {result.request.seed}; "
                "share of the 'to' LoRA per frame: " + " ".join(f"{x:.2f}" for x in result.t))
        if result.judged_shots:
            info += (f"\n\nJudged shot per frame ({result.judge}, after "
                     f"{len(result.history)} rounds): " + " ".join(result.judged_shots))
        return self._shown(result, info)

    def restyle(self, form: RestyleForm, *, owner: str = "api", progress=None) -> tuple:
        """(restyled MP4, metrics plot PNG, metrics.json, summary markdown). Stopped: no files, and the
        summary says how far it got (running the same restyle again resumes it, seed -1 included)."""
        if not form.video:
            raise InvalidInput("Upload a video to restyle.")
        size = _num(form.size, 512, "Long side", int)
        max_frames = _num(form.max_frames, 0, "Max frames", int)
        if max_frames < 0:
            raise InvalidInput(f"Max frames must be 0 (the whole video) or at least 2 (got {max_frames}).")
        req = RestyleRequest(video=Path(form.video), prompt=form.prompt or "a cinematic film still",
                             shot=_choice(form.shot), alpha=_num(form.alpha, 1.0, "α"), control=form.control or "none",
                             strength=_num(form.strength, 0.6, "Denoising strength"),
                             seed_policy=form.seed_policy or "fixed", seed=_num(form.seed, -1, "Seed", int),
                             width=size, height=size, max_frames=max_frames or None,
                             negative_prompt=form.negative or "", sampler=form.sampler or "DDIM",
                             steps=_num(form.steps, 16, "Steps", int), cfg=_num(form.cfg, 6.0, "CFG"))
        svc = self.svc
        try:
            with svc.gen.job(owner, progress=progress) as job:
                result = svc.restyle(req, job)
        except Cancelled as exc:
            return None, None, None, f"**{exc}**".replace("run the same restyle again", "press Restyle again")
        folder = self._folder()
        m = result.metrics
        summary = (f"**{result.frames} frames** at {result.fps:g} fps ({m['seed_policy']} seed {m['seed']}, control "
                   f"{m['control']}): PSNR {m['psnr']['mean']:.2f} dB · T-SSIM {m['t_ssim']['mean']:.4f} · "
                   f"warping error {m['warp_error']['mean']:.5f}  \nInput video itself: PSNR "
                   f"{m['input']['psnr']:.2f} dB · T-SSIM {m['input']['t_ssim']:.4f}"
                   + (f"  \nResumed: {result.resumed_from} frames were already done." if result.resumed_from else ""))
        return (self._copy(result.video, folder), self._copy(result.plot, folder),
                self._copy(result.folder / "metrics.json", folder), summary)

    @staticmethod
    def seed_of(parameters: str | None) -> str:
        """The seed of the clip shown (its settings text), for the Seed box: A1111's ♻ button."""
        match = re.search(r"(?:^|[\s,])Seed: (\d+)", parameters or "")
        if not match:
            raise InvalidInput("Make a clip first: its seed is reused from the settings shown.")
        return match.group(1)

    def stop(self, owner: str) -> str:
        gen = self.svc.gen
        if gen.cancel(owner):
            return "Stopped (a restyle keeps its finished frames)."
        if gen.busy():      # e.g. a run started before this page was reloaded (a new session)
            return ("Nothing of yours is running on this page. The model is busy with another run (someone "
                    "else's, or one started before the page was reloaded); it finishes by itself.")
        return "Nothing is running."

    # -- files --------------------------------------------------------------------------------
    def _shown(self, result, info: str) -> Shown:
        folder = self._folder()
        return Shown(self._copy(result.folder / "clip.mp4", folder), self._copy(result.folder / "clip.gif", folder),
                     info, result.parameters)

    def _folder(self) -> Path:
        cutoff = time.time() - KEEP_TEMP_S
        for old in self.root.iterdir():
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.root))

    @staticmethod
    def _copy(path: Path, folder: Path) -> str:
        return str(shutil.copy2(path, folder / Path(path).name))
