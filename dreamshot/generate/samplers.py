"""Samplers: A1111's names -> diffusers schedulers, built once per sampler and seeded per batch.

A1111's "DPM++ SDE Karras" is ``DPMSolverSDEScheduler(use_karras_sigmas=True)``. Its Brownian-tree
noise is not drawn from the pipeline's ``generator`` but from ``noise_sampler_seed``: one int for one
image, or a list with one seed per batch image (diffusers' ``BatchedBrownianTree`` then keeps one
tree per image), so each image of a batch gets the SDE noise of its own seed. The other stochastic
samplers (Euler a, DPM++ 2M SDE) draw from the per-image generators the pipeline hands them.
"""

from __future__ import annotations

from dreamshot.errors import InvalidInput

DEFAULT_SAMPLER = "DPM++ SDE Karras"

# A1111's sampler names -> (diffusers scheduler class, extra config).
SAMPLERS = {
    "DPM++ SDE Karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++"}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {"clip_sample": False}),   # latents are not in [-1, 1]: never clamp x0 (A1111 doesn't)
    "UniPC": ("UniPCMultistepScheduler", {}),
}
_ALIASES = {"dpm++ sde": "DPM++ SDE Karras", "euler_a": "Euler a", "euler ancestral": "Euler a",
            "k_euler_a": "Euler a", "k_euler": "Euler", "dpmpp_sde_karras": "DPM++ SDE Karras",
            "dpmpp_2m_karras": "DPM++ 2M Karras", "dpmpp_2m": "DPM++ 2M"}


def sampler_name(name: str) -> str:
    """The canonical A1111 spelling of a sampler name; InvalidInput if unknown."""
    text = str(name or "").strip()
    for known in SAMPLERS:
        if text.lower() == known.lower():
            return known
    if text.lower() in _ALIASES:
        return _ALIASES[text.lower()]
    raise InvalidInput(f"Unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}.")


# ---- AUTOMATIC1111 >= 1.9 spelling: a sampler and a "Schedule type" -------------------------------
# Each studio sampler as A1111 1.9+ writes the same setting (modules/sd_samplers_kdiffusion.py,
# sd_schedulers.py): the Karras variants name their schedule; "DPM++ 2M" alone is the uniform
# schedule (A1111 reads a bare "DPM++ 2M" as *Automatic*, i.e. Karras); samplers without a schedule of
# their own are written "Automatic" as A1111 writes them.
A1111_FORM = {
    "DPM++ SDE Karras": ("DPM++ SDE", "Karras"),
    "DPM++ 2M Karras": ("DPM++ 2M", "Karras"),
    "DPM++ 2M": ("DPM++ 2M", "Uniform"),
    "DPM++ 2M SDE Karras": ("DPM++ 2M SDE", "Karras"),
    "Euler a": ("Euler a", "Automatic"),
    "Euler": ("Euler", "Automatic"),
    "DDIM": ("DDIM", "Automatic"),
    "UniPC": ("UniPC", "Automatic"),
}
# What A1111's "Automatic" schedule is for each sampler that has a default of its own; the others use
# the model's plain (uniform) sigmas, so Automatic = Uniform for them.
A1111_AUTOMATIC = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2M SDE": "Exponential",
                   "DPM++ 2M SDE Heun": "Exponential", "DPM++ 2S a": "Karras", "DPM++ 3M SDE": "Exponential",
                   "DPM2": "Karras", "DPM2 a": "Karras", "Restart": "Karras"}
# A1111 1.10's schedule labels (and their internal names / aliases, which it also reads).
A1111_SCHEDULES = {"automatic": "Automatic", "uniform": "Uniform", "karras": "Karras",
                   "exponential": "Exponential", "polyexponential": "Polyexponential",
                   "sgm uniform": "SGM Uniform", "sgm_uniform": "SGM Uniform", "sgmuniform": "SGM Uniform",
                   "kl optimal": "KL Optimal", "kl_optimal": "KL Optimal", "align your steps": "Align Your Steps",
                   "align_your_steps": "Align Your Steps", "simple": "Simple", "normal": "Normal",
                   "ddim": "DDIM", "beta": "Beta"}
_SCHEDULE_FREE = ("DDIM", "UniPC")   # A1111's timestep samplers ignore the schedule type


def a1111_form(sampler: str) -> tuple[str, str]:
    """(``Sampler``, ``Schedule type``) as AUTOMATIC1111 1.9+ writes a studio sampler."""
    return A1111_FORM[sampler_name(sampler)]


def from_a1111(sampler: str | None, schedule: str | None) -> tuple[str | None, str | None]:
    """The studio sampler of an infotext's ``Sampler`` and ``Schedule type`` (None when there is no
    sampler), and a note when the image's exact sampler is not offered here.

    Without a ``Schedule type`` the text is of the old combined spelling (A1111 before 1.9, and this
    studio before it followed 1.9): ``DPM++ 2M Karras`` is Karras and a bare ``DPM++ 2M`` is the plain
    schedule, as it meant then. With one, it is read as A1111 1.9+ reads it: a schedule named at the
    end of the sampler wins, and *Automatic* is the sampler's own default (Karras for DPM++ 2M)."""
    name = str(sampler or "").strip()
    if not name:
        return None, None
    if schedule is None or not str(schedule).strip():
        try:
            return sampler_name(name), None
        except InvalidInput:
            return None, f"Sampler {name!r} is not available here; using {DEFAULT_SAMPLER}."
    sched = A1111_SCHEDULES.get(str(schedule).strip().lower(), str(schedule).strip())
    for option, label in sorted(A1111_SCHEDULES.items(), key=lambda kv: -len(kv[0])):
        if name.lower().endswith(" " + option):
            name, sched = name[: -len(option) - 1].strip(), label
            break
    if sched == "Automatic":
        sched = A1111_AUTOMATIC.get(name, "Automatic")
    if sched == "Uniform" and name not in A1111_AUTOMATIC:
        sched = "Automatic"   # no schedule of its own: Uniform is its Automatic
    family = [ours for ours, (theirs, _) in A1111_FORM.items() if theirs.lower() == name.lower()]
    for ours in family:
        if A1111_FORM[ours][1] == sched or A1111_FORM[ours][0] in _SCHEDULE_FREE:
            return ours, None
    if family:
        return family[0], (f"A1111's {name} with the {sched} schedule is not offered here; "
                           f"using {family[0]}.")
    try:
        return sampler_name(name), None
    except InvalidInput:
        shown = f"{name} {sched}" if sched != "Automatic" else name
        return None, f"Sampler {shown!r} is not available here; using {DEFAULT_SAMPLER}."


def make_scheduler(base_config: dict, sampler: str, seed: int | list | None = None):
    """A new scheduler for ``sampler`` from the model's scheduler config (``seed``: the SDE seed)."""
    import diffusers

    class_name, extra = SAMPLERS[sampler_name(sampler)]
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    config.update(extra)
    cls = _float32_brownian_sde() if class_name == "DPMSolverSDEScheduler" else getattr(diffusers, class_name)
    scheduler = cls.from_config(config)
    seed_scheduler(scheduler, seed)
    return scheduler


def _float32_brownian_sde():
    """DPM++ SDE whose Brownian-tree noise is drawn in float32 and cast to the latents' dtype: drawn in
    float16/bfloat16 (diffusers' own), torch's CPU sampler fills some numbers differently, so a seed
    gave another picture in reduced precision at sizes whose latent is not a multiple of 16 numbers."""
    import torch
    from diffusers import DPMSolverSDEScheduler
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    class Float32BrownianSDEScheduler(DPMSolverSDEScheduler):
        def step(self, model_output, timestep, sample, *args, **kwargs):
            if self.noise_sampler is None and sample.dtype != torch.float32:
                positive = self.sigmas[self.sigmas > 0]
                tree = BrownianTreeNoiseSampler(sample.float(), positive.min().item(), self.sigmas.max().item(),
                                                self.noise_sampler_seed)
                self.noise_sampler = lambda sigma, sigma_next: tree(sigma, sigma_next).to(sample.dtype)
            return super().step(model_output, timestep, sample, *args, **kwargs)

    return Float32BrownianSDEScheduler


def seed_scheduler(scheduler, seeds) -> None:
    """Give an SDE scheduler the Brownian seed(s) of the coming run: an int for one image, a list
    (one per image) for a batch. A no-op for samplers that draw from the pipeline's generators."""
    if hasattr(scheduler, "noise_sampler_seed"):
        if isinstance(seeds, (list, tuple)) and len(seeds) == 1:
            seeds = seeds[0]
        scheduler.noise_sampler_seed = list(seeds) if isinstance(seeds, (list, tuple)) else seeds
        scheduler.noise_sampler = None


def steps_shown(step: int, total: int, steps: int) -> int:
    """The user's step number (1..steps) for the pipeline's 0-based ``step`` of ``total``: a
    second-order sampler (DPM++ SDE) makes 2*steps-1 model calls for ``steps`` steps."""
    if total <= steps:
        return min(step + 1, steps)
    if total == 2 * steps - 1:   # Heun-like: two calls per step, one for the last
        return step // 2 + 1
    return max(1, min(steps, -(-(step + 1) * steps // total)))


class SchedulerCache:
    """One scheduler object per sampler, built on first use from the model's own config and reused
    (``set_timesteps`` resets its state at the start of every pipeline call)."""

    def __init__(self, base_config: dict):
        self.base_config = dict(base_config)
        self._built: dict = {}

    def get(self, sampler: str, seeds):
        name = sampler_name(sampler)
        scheduler = self._built.get(name)
        if scheduler is None:
            scheduler = self._built[name] = make_scheduler(self.base_config, name)
        seed_scheduler(scheduler, seeds)
        return scheduler
