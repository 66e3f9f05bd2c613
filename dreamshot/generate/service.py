"""Shot-type generation: the shared base pipeline, shot LoRAs as named adapters, samplers, seeds,
blends, progress and cancel. Used by the Generate tab, the CLI (``python -m dreamshot generate``)
and any feature that needs images (survey, evaluation) through ``service(studio)``.

How a request runs (``GenerationService.generate``):

1. ``check_inputs``: every field in range, with a message for the user.
2. Resolve the shot LoRA(s) from the ``loras`` table (re-read per request: a LoRA the studio has
   just trained appears without a restart) and build the prompt from the template.
3. Under the service lock: load missing LoRAs once as named adapters (validated with
   ``safetensors`` first, never unpickled), then merge the request's mix into the weights from a
   saved copy of the originals (``adapters.AdapterBank``): an α or shot change costs about a
   millisecond on the demo model, a LoRA at fixed α runs at the base model's speed, floating-point
   drift never accumulates and α = 0 is bit-identical to the base model.
4. For each image: a fresh scheduler (the SDE sampler gets ``noise_sampler_seed`` from the seed), a
   CPU generator seeded with ``seed + i``, a step callback for progress and cancel.
5. Each image carries its settings as A1111 ``parameters`` text and is saved under outputs/.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dreamshot import __version__
from dreamshot.generate import pngmeta
from dreamshot.errors import DreamShotError, InvalidInput, ModelLoadError
from dreamshot.generate.adapters import AdapterBank
from dreamshot.generate.loras import LoraInfo, LoraLibrary, a1111_lora_hash, file_sha256, ModelShapes, inspect_lora_file, store_upload
from dreamshot.shots import DEFAULT_TEMPLATE, get_taxonomy

log = logging.getLogger(__name__)

DEFAULT_SAMPLER = "DPM++ SDE Karras"
MAX_SIDE = 1024
MIN_SIDE = 64
MAX_IMAGES = 8
MAX_STEPS = 150
CFG_RANGE = (1.0, 30.0)
ALPHA_RANGE = (0.0, 1.5)
MAX_BLEND = 4
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1

# A1111's sampler names -> (diffusers scheduler class, extra config). "seeded": the scheduler's own
# Brownian noise needs noise_sampler_seed to be reproducible.
SAMPLERS = {
    "DPM++ SDE Karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++"}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
}
_SAMPLER_ALIASES = {"dpm++ sde": "DPM++ SDE Karras", "euler_a": "Euler a", "euler ancestral": "Euler a",
                    "k_euler_a": "Euler a", "k_euler": "Euler", "dpmpp_sde_karras": "DPM++ SDE Karras",
                    "dpmpp_2m_karras": "DPM++ 2M Karras", "dpmpp_2m": "DPM++ 2M"}


def sampler_name(name: str) -> str:
    """The canonical A1111 spelling of a sampler name; InvalidInput if unknown."""
    text = (name or "").strip()
    for known in SAMPLERS:
        if text.lower() == known.lower():
            return known
    if text.lower() in _SAMPLER_ALIASES:
        return _SAMPLER_ALIASES[text.lower()]
    raise InvalidInput(f"Unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}.")


@dataclass
class GenerationRequest:
    """Everything one generation needs. ``shot`` is a shot type (``close``) or a LoRA name; None
    is the base model. ``blend`` ({shot or LoRA: weight}) mixes several LoRAs and overrides α."""
    prompt: str
    shot: str | None = None
    alpha: float = 1.0
    use_template: bool = True
    negative_prompt: str = ""
    sampler: str = DEFAULT_SAMPLER
    steps: int = 16
    cfg: float = 6.0
    width: int = 512
    height: int = 512
    seed: int = -1
    num_images: int = 1
    blend: dict | None = None

    def replace(self, **changes) -> "GenerationRequest":
        return dataclasses.replace(self, **changes)


def check_inputs(req: GenerationRequest) -> GenerationRequest:
    """Validate and normalise a request (types, ranges); raises InvalidInput with the reason."""
    prompt = (req.prompt or "").strip()
    if not prompt:
        raise InvalidInput("The prompt is empty: describe the picture (e.g. 'a woman reading in a café').")
    if len(prompt) > MAX_PROMPT_CHARS or len(req.negative_prompt or "") > MAX_PROMPT_CHARS:
        raise InvalidInput(f"Prompts are limited to {MAX_PROMPT_CHARS} characters.")
    try:
        width, height, steps, n, seed = (int(req.width), int(req.height), int(req.steps),
                                         int(req.num_images), int(req.seed))
        alpha, cfg = float(req.alpha), float(req.cfg)
    except (TypeError, ValueError):
        raise InvalidInput("Width, height, steps, number of images and seed must be whole numbers; "
                           "α and CFG numbers.") from None
    for label, side in (("Width", width), ("Height", height)):
        if side % 8:
            raise InvalidInput(f"{label} {side} is not a multiple of 8 (try {max(MIN_SIDE, side // 8 * 8)}).")
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise InvalidInput(f"{label} must be between {MIN_SIDE} and {MAX_SIDE} pixels (got {side}).")
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidInput(f"Steps must be between 1 and {MAX_STEPS} (got {steps}).")
    if not CFG_RANGE[0] <= cfg <= CFG_RANGE[1]:
        raise InvalidInput(f"CFG scale must be between {CFG_RANGE[0]:g} and {CFG_RANGE[1]:g} (got {cfg:g}).")
    if not ALPHA_RANGE[0] <= alpha <= ALPHA_RANGE[1]:
        raise InvalidInput(f"α must be between {ALPHA_RANGE[0]:g} and {ALPHA_RANGE[1]:g} (got {alpha:g}).")
    if not 1 <= n <= MAX_IMAGES:
        raise InvalidInput(f"Number of images must be between 1 and {MAX_IMAGES} (got {n}).")
    if seed != -1 and not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"Seed must be -1 (random) or between 0 and {MAX_SEED} (got {seed}).")
    blend = None
    if req.blend:
        if len(req.blend) > MAX_BLEND:
            raise InvalidInput(f"A blend mixes at most {MAX_BLEND} LoRAs.")
        blend = {}
        for name, weight in req.blend.items():
            try:
                weight = float(weight)
            except (TypeError, ValueError):
                raise InvalidInput(f"Blend weight for {name!r} is not a number.") from None
            if not ALPHA_RANGE[0] <= weight <= ALPHA_RANGE[1]:
                raise InvalidInput(f"Blend weight for {name!r} must be between 0 and {ALPHA_RANGE[1]:g}.")
            blend[str(name).strip()] = weight
    shot = (req.shot or "").strip() or None
    if shot and shot.lower() in ("none", "base"):
        shot = None
    return req.replace(prompt=prompt, negative_prompt=(req.negative_prompt or "").strip(), width=width,
                       height=height, steps=steps, num_images=n, seed=seed, alpha=alpha, cfg=cfg,
                       sampler=sampler_name(req.sampler), shot=shot, blend=blend)


def random_seed() -> int:
    """A random seed leaving room for seed + i of a batch."""
    return random.randint(0, MAX_SEED - MAX_IMAGES)


def parse_blend(text: str) -> dict | None:
    """``close=0.6, medium=0.4`` (or ``close:0.6``) -> {"close": 0.6, "medium": 0.4}; '' -> None."""
    text = (text or "").strip()
    if not text:
        return None
    out = {}
    for part in re.split(r"[,;\n]+", text):
        if not part.strip():
            continue
        match = re.fullmatch(r"\s*([^=:\s]+)\s*[=:]\s*([-+]?\d*\.?\d+)\s*", part)
        if not match:
            raise InvalidInput(f"Blend entry {part.strip()!r} is not 'name=weight' (e.g. close=0.6, medium=0.4).")
        out[match.group(1)] = float(match.group(2))
    return out or None


# ---- results --------------------------------------------------------------------------------------

@dataclass
class GeneratedImage:
    image: object          # PIL.Image
    seed: int
    parameters: str        # A1111 text
    path: Path | None = None   # saved copy under outputs/ (never handed to the browser)

    def save(self, path: Path) -> Path:
        return pngmeta.save_png(self.image, path, self.parameters)


@dataclass
class GenerationResult:
    request: GenerationRequest       # checked, with the seed actually used
    prompt: str                      # the prompt the model saw
    loras: list                      # [(LoraInfo, weight)] applied
    images: list = field(default_factory=list)
    cancelled: bool = False
    seconds: float = 0.0

    @property
    def seeds(self) -> list:
        return [img.seed for img in self.images]


class Cancelled(DreamShotError):
    """The user stopped the generation."""


# ---- jobs: progress and cancel ---------------------------------------------------------------------

@dataclass
class Job:
    """One running request of one owner (a browser session, a CLI run); ``cancel()`` stops it at
    the next denoising step. ``progress(fraction, text)`` is called from the worker thread."""
    owner: str = "local"
    progress: object = None
    event: threading.Event = field(default_factory=threading.Event)
    prefix: str = ""        # e.g. "panel 2/5 · ", put before the progress text

    def cancel(self) -> None:
        self.event.set()

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def report(self, fraction: float, text: str) -> None:
        if self.progress is not None:
            try:
                self.progress(min(max(fraction, 0.0), 1.0), self.prefix + text)
            except Exception:  # a progress display must never break a generation
                log.debug("progress callback failed", exc_info=True)


# ---- the service -----------------------------------------------------------------------------------

class GenerationService:
    def __init__(self, studio):
        self.studio = studio
        self.library = LoraLibrary(studio)
        self.lock = threading.RLock()        # held around adapter/scheduler changes and pipeline runs
        self._bank: AdapterBank | None = None  # the pipeline's LoRA adapters (loaded on first use)
        self._shapes: ModelShapes | None = None
        self._model_hash: str | None = None
        self._lora_hashes: dict[str, str] = {}   # file sha256 -> A1111 short hash
        self._jobs: dict[str, set] = {}       # owner -> ids of its running jobs
        self._job_objects: dict[int, Job] = {}
        self._jobs_lock = threading.Lock()

    # -- model --------------------------------------------------------------------------------------
    @property
    def pipe(self):
        return self.studio.models.pipeline()

    def shapes(self) -> ModelShapes:
        if self._shapes is None:
            self._shapes = ModelShapes.of_pipeline(self.pipe)
        return self._shapes

    @property
    def model_name(self) -> str:
        status = self.studio.models.status
        return "dreamshot-demo" if status.is_demo else Path(status.source.rstrip("/")).name

    def model_hash(self) -> str:
        """A1111-style short model hash: the first 10 hex digits of the UNet weights' sha256."""
        if self._model_hash is None:
            self._model_hash = _unet_hash(self.studio.models.status.source) or ""
        return self._model_hash

    def taxonomy(self):
        return get_taxonomy(self.studio.db.get_setting("taxonomy", None))

    def template(self) -> str:
        return self.studio.db.get_setting("prompt_template", None) or DEFAULT_TEMPLATE

    # -- LoRAs --------------------------------------------------------------------------------------
    def loras(self) -> list[LoraInfo]:
        """The LoRA library, re-read now."""
        return self.library.list()

    def resolve_lora(self, key: str, loras: list[LoraInfo] | None = None) -> LoraInfo:
        """A LoRA by name, else the newest LoRA for that shot type; InvalidInput otherwise."""
        loras = self.loras() if loras is None else loras
        for info in loras:
            if info.name == key:
                return info
        of_shot = [info for info in loras if info.shot == key]
        if of_shot:
            return of_shot[-1]
        taxonomy = self.taxonomy()
        if key in taxonomy.names:
            raise InvalidInput(f"No LoRA for the shot type {key!r} yet: train one in the Train tab "
                               "(or upload one), then generate again.")
        available = sorted({i.name for i in loras} | {i.shot for i in loras if i.shot})
        raise InvalidInput(f"Unknown shot type or LoRA {key!r}. Available: "
                           + (", ".join(available) if available else "none yet (base model only)") + ".")

    def shot_phrase(self, info: LoraInfo | None, fallback: str | None = None) -> str | None:
        """The words for ``{shot}`` in the template (``close shot``), from the taxonomy."""
        shot = info.shot if info is not None else fallback
        if not shot:
            return None
        taxonomy = self.taxonomy()
        return taxonomy.get(shot).prompt if shot in taxonomy.names else shot.replace("_", " ")

    def plan(self, req: GenerationRequest) -> tuple[str, list]:
        """(prompt the model sees, [(LoraInfo, weight)]) for a checked request."""
        loras = self.loras()
        if req.blend:
            mix = [(self.resolve_lora(name, loras), w) for name, w in req.blend.items()]
            lead = self.resolve_lora(req.shot, loras) if req.shot else max(mix, key=lambda m: m[1])[0]
        elif req.shot:
            lead = self.resolve_lora(req.shot, loras)
            mix = [(lead, req.alpha)]
        else:
            lead, mix = None, []
        prompt = req.prompt
        phrase = self.shot_phrase(lead)
        if req.use_template and phrase:
            template = self.template()
            if "{caption}" not in template:
                raise InvalidInput("The project's prompt template must contain {caption}.")
            prompt = template.replace("{shot}", phrase).replace("{caption}", req.prompt)
        return prompt, mix

    def upload_lora(self, path: Path, *, name: str, shot: str | None = None) -> LoraInfo:
        """Validate, store and register an uploaded LoRA, then prove diffusers can load it; a
        refused file leaves nothing behind and the service keeps working."""
        if shot:
            self.taxonomy().get(shot)
        if any(i.name == (name or "").strip() for i in self.loras()):
            raise InvalidInput(f"A LoRA called {name.strip()!r} is already in the library; choose another name.")
        with self.lock:
            info = store_upload(self.library, Path(path), name=name, shot=shot, shapes=self.shapes(),
                                base_model=self.studio.models.status.source)
            try:
                self._ensure_loaded([info])
                self.adapters.apply(())
            except DreamShotError:
                self.library.remove(info.name)
                info.path.unlink(missing_ok=True)
                raise
        return info

    def _adapter_name(self, info: LoraInfo) -> str:
        return re.sub(r"\W", "_", info.name)[:48] + "_" + info.sha256[:8]

    @property
    def adapters(self) -> AdapterBank:
        if self._bank is None:
            self._bank = AdapterBank(self.pipe)
        return self._bank

    def _ensure_loaded(self, infos: list[LoraInfo]) -> None:
        """Load each LoRA once as a named adapter (validated first; never via pickle)."""
        from safetensors.torch import load_file

        for info in infos:
            name = self._adapter_name(info)
            if name in self.adapters.loaded:
                continue
            if not info.path.is_file():
                raise ModelLoadError(f"The LoRA file of {info.name!r} is missing ({info.path.name}).")
            inspect_lora_file(info.path, self.shapes())
            try:
                seconds = self.adapters.load(name, load_file(str(info.path)), info.sha256)
            except ModelLoadError as exc:
                log.warning("LoRA %s failed to load: %s", info.name, exc)
                raise ModelLoadError(f"The LoRA {info.name!r} {exc}") from None
            log.info("loaded LoRA %s as adapter %s in %.2fs", info.name, name, seconds)

    def configure(self, mix: list) -> float:
        """Load (once) and merge [(LoraInfo, weight)]; returns the seconds it took (benchmarks).
        Callers hold ``self.lock``."""
        t0 = time.perf_counter()
        self._ensure_loaded([info for info, _ in mix])
        if mix or self._bank is not None:
            self.adapters.apply(tuple((self._adapter_name(info), w) for info, w in mix))
        return time.perf_counter() - t0

    # -- jobs ---------------------------------------------------------------------------------------
    @contextmanager
    def job(self, owner: str = "local", progress=None):
        job = Job(owner=owner, progress=progress)
        with self._jobs_lock:
            self._jobs.setdefault(owner, set()).add(id(job))
            self._job_objects[id(job)] = job
        try:
            yield job
        finally:
            with self._jobs_lock:
                self._jobs.get(owner, set()).discard(id(job))
                self._job_objects.pop(id(job), None)

    def cancel(self, owner: str) -> int:
        """Stop every running job of ``owner``; returns how many were told to stop."""
        with self._jobs_lock:
            jobs = [self._job_objects[j] for j in self._jobs.get(owner, ()) if j in self._job_objects]
        for job in jobs:
            job.cancel()
        return len(jobs)

    # -- generation ---------------------------------------------------------------------------------
    def generate(self, req: GenerationRequest, job: Job | None = None, *, save: bool = True,
                 progress_span: tuple = (0.0, 1.0)) -> GenerationResult:
        """Run a request; raises Cancelled if stopped before the first image finished."""
        req = check_inputs(req)
        if req.seed == -1:
            req = req.replace(seed=random_seed())
        prompt, mix = self.plan(req)
        job = job or Job()
        result = GenerationResult(req, prompt, mix)
        t0 = time.perf_counter()
        if not self.lock.acquire(blocking=False):
            job.report(progress_span[0], "waiting for another generation to finish…")
            self.lock.acquire()
        try:
            if job.cancelled:
                raise Cancelled("Stopped.")
            self.configure(mix)
            for i in range(req.num_images):
                seed = req.seed + i
                image = self._run_pipeline(req, prompt, seed, job, i, progress_span)
                if image is None:
                    break
                text = self.parameters_text(req, prompt, mix, seed)
                result.images.append(GeneratedImage(image, seed, text))
        finally:
            self.lock.release()
        result.cancelled = job.cancelled
        result.seconds = time.perf_counter() - t0
        if not result.images:
            raise Cancelled("Stopped before the first image was finished.")
        if save:
            for img in result.images:
                img.path = img.save(self.output_path(img.seed))
        return result

    def _run_pipeline(self, req, prompt, seed, job, index, span):
        import torch

        pipe = self.pipe
        pipe.scheduler = make_scheduler(self._scheduler_config(), req.sampler, seed)
        lo, hi = span
        share = (hi - lo) / req.num_images

        def on_step_end(pipeline, step, timestep, kwargs):
            total = max(getattr(pipeline, "num_timesteps", req.steps) or req.steps, 1)
            job.report(lo + share * (index + (step + 1) / total),
                       f"image {index + 1}/{req.num_images}: step {step + 1}/{total}")
            if job.cancelled:
                pipeline._interrupt = True
            return kwargs

        generator = torch.Generator(device="cpu").manual_seed(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ta>=t0.*")
            warnings.filterwarnings("ignore", message=".*Should have.*")
            out = pipe(prompt=prompt, negative_prompt=req.negative_prompt or None,
                       num_inference_steps=req.steps, guidance_scale=req.cfg, width=req.width,
                       height=req.height, generator=generator, callback_on_step_end=on_step_end)
        if job.cancelled:
            return None
        return out.images[0]

    def _scheduler_config(self):
        if not hasattr(self, "_base_scheduler_config"):
            self._base_scheduler_config = dict(self.pipe.scheduler.config)
        return self._base_scheduler_config

    def parameters_text(self, req: GenerationRequest, prompt: str, mix: list, seed: int) -> str:
        """The A1111 ``parameters`` text of one image (custom keys: Shot, Caption, Prompt template)."""
        templated = req.use_template and prompt != req.prompt
        settings = {
            "Steps": req.steps, "Sampler": req.sampler, "CFG scale": float(req.cfg), "Seed": seed,
            "Size": f"{req.width}x{req.height}", "Model hash": self.model_hash() or None,
            "Model": self.model_name,
            "Lora hashes": ", ".join(f"{info.name}: {self.lora_hash(info)}" for info, _ in mix) or None,
            "Shot": req.shot,
            "Caption": req.prompt if templated else None,
            "Prompt template": self.template() if templated else None,
            "Version": f"DreamShot {__version__}",
        }
        return pngmeta.format_parameters(prompt, req.negative_prompt, settings, [(i.name, w) for i, w in mix])

    def lora_hash(self, info: LoraInfo) -> str:
        """A1111's short hash of a LoRA file (cached per file content)."""
        if info.sha256 not in self._lora_hashes:
            try:
                self._lora_hashes[info.sha256] = a1111_lora_hash(info.path)
            except OSError:
                return info.short_hash
        return self._lora_hashes[info.sha256]

    def output_path(self, seed: int) -> Path:
        now = datetime.now(timezone.utc)
        folder = Path(self.studio.settings.outputs_dir) / now.strftime("%Y-%m-%d")
        return folder / f"{now.strftime('%H%M%S-%f')}-{seed}.png"

    # -- compare ------------------------------------------------------------------------------------
    def compare_with_base(self, req: GenerationRequest, job: Job | None = None, *, save: bool = True):
        """(base result, LoRA result) from the same seed and the same final prompt."""
        req = check_inputs(req)
        if not req.shot and not req.blend:
            raise InvalidInput("Choose a shot LoRA to compare with the base model.")
        if req.seed == -1:
            req = req.replace(seed=random_seed())
        prompt, _ = self.plan(req)
        job = job or Job()
        job.prefix = "LoRA · "
        lora = self.generate(req, job, save=save, progress_span=(0.0, 0.5))
        job.prefix = "base model · "
        base = self.generate(base_request(req, prompt), job, save=save, progress_span=(0.5, 1.0))
        return base, lora

    # -- read back ----------------------------------------------------------------------------------
    def request_from_parameters(self, text: str) -> tuple[GenerationRequest, list[str]]:
        """A request restoring an image's settings from A1111 text, and notes on what could not be
        restored (unknown LoRA, sampler ...). Raises InvalidInput when the text holds no settings."""
        return request_from_parameters(text, self.loras(), self.taxonomy())


def base_request(req: GenerationRequest, prompt: str) -> GenerationRequest:
    """The same request on the base model, with the exact prompt the LoRA image saw."""
    return req.replace(prompt=prompt, shot=None, blend=None, use_template=False, alpha=1.0)


def request_from_parameters(text: str, loras: list[LoraInfo], taxonomy) -> tuple[GenerationRequest, list[str]]:
    params = pngmeta.parse_parameters(text)
    if not params.prompt and not params.settings:
        raise InvalidInput("No generation settings found (the image has no 'parameters' text).")
    notes: list[str] = []
    req = GenerationRequest(prompt=params.prompt, negative_prompt=params.negative_prompt, use_template=False)
    known = {i.name: i for i in loras}
    found = [(n, w) for n, w in params.loras if n in known]
    for name, _ in params.loras:
        if name not in known:
            notes.append(f"LoRA {name!r} is not in this studio's library; it was left out.")
    shot = params.settings.get("Shot")
    caption = params.settings.get("Caption")
    if len(found) == 1:
        req.shot, req.alpha = found[0][0], found[0][1]
    elif len(found) > 1:
        req.blend = dict(found)
        req.shot = shot if shot in known or shot in taxonomy.names else None
    if caption and found and "Prompt template" in params.settings:
        req.prompt, req.use_template = caption, True
    for key, attr, conv in (("Steps", "steps", params.get_int), ("CFG scale", "cfg", params.get_float),
                            ("Seed", "seed", params.get_int)):
        value = conv(key)
        if value is not None:
            setattr(req, attr, value)
    if params.size:
        req.width, req.height = params.size
    if params.sampler:
        try:
            req.sampler = sampler_name(params.sampler)
        except InvalidInput:
            notes.append(f"Sampler {params.sampler!r} is not available here; using {DEFAULT_SAMPLER}.")
    return req, notes


def make_scheduler(base_config: dict, sampler: str, seed: int):
    import diffusers

    class_name, extra = SAMPLERS[sampler_name(sampler)]
    cls = getattr(diffusers, class_name)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    config.update(extra)
    if class_name == "DPMSolverSDEScheduler":
        config["noise_sampler_seed"] = seed
    return cls.from_config(config)


def _unet_hash(source: str) -> str | None:
    """sha256[:10] of the UNet weights file of a local folder or a cached Hub snapshot."""
    folder = Path(source)
    if not folder.exists():
        from dreamshot.models import _hub_cached

        cached = _hub_cached(source)
        folder = Path(cached) if cached else None
    if folder is None:
        return None
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        path = folder / "unet" / name
        if path.is_file():
            return file_sha256(path)[:10]
    return None


_SERVICES_LOCK = threading.Lock()


def service(studio) -> GenerationService:
    """The one GenerationService of a studio (it owns the shared pipeline's adapters)."""
    existing = getattr(studio, "_generation_service", None)
    if existing is None:
        with _SERVICES_LOCK:
            existing = getattr(studio, "_generation_service", None)
            if existing is None:
                existing = GenerationService(studio)
                object.__setattr__(studio, "_generation_service", existing)
    return existing
