"""Everything the video feature takes from the generation feature, in one place: if
``dreamshot.generate`` renames something, this file is the one-line fix.

The base pipeline itself comes from the core (``studio.models.pipeline()``); the generation service
owns the shot-LoRA library, the LoRA mix merged into that pipeline, its lock and its jobs (progress
and cancel). Video work holds ``gen.lock`` while it runs, because it shares the pipeline's weights.
"""

from __future__ import annotations

from dreamshot.generate.service import (  # noqa: F401 - re-exported for the video modules
    DEFAULT_SAMPLER,
    SAMPLERS,
    Cancelled,
    GenerationRequest,
    check_inputs,
    make_scheduler,
    random_seed,
    service as _generation_service,
)

# Keys a sampler adds to the scheduler config; stripped so one sampler's extras never leak into another's.
_SAMPLER_KEYS = ("use_karras_sigmas", "algorithm_type", "noise_sampler_seed")


def generation(studio):
    """The studio's GenerationService (LoRA library, adapter mix, lock, jobs)."""
    return _generation_service(studio)


def base_pipeline(studio):
    return studio.models.pipeline()


def clean_base(gen) -> None:
    """Restore the shared pipeline's original weights (no LoRA merged). Callers hold ``gen.lock``."""
    gen.configure([])


def merge_loras(gen, mix: list) -> None:
    """Merge [(LoraInfo, weight)] into the shared pipeline (img2img restyle). Callers hold ``gen.lock``."""
    gen.configure(mix)


def scheduler(base_config: dict, sampler: str, seed: int, **overrides):
    config = {k: v for k, v in dict(base_config).items() if k not in _SAMPLER_KEYS}
    config.update(overrides)
    return make_scheduler(config, sampler, seed)
