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


def make_scheduler(base_config: dict, sampler: str, seed: int | list | None = None):
    """A new scheduler for ``sampler`` from the model's scheduler config (``seed``: the SDE seed)."""
    import diffusers

    class_name, extra = SAMPLERS[sampler_name(sampler)]
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    config.update(extra)
    scheduler = getattr(diffusers, class_name).from_config(config)
    seed_scheduler(scheduler, seed)
    return scheduler


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
