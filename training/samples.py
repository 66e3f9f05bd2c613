"""Images the trainer makes with the model it trains: validation images (fixed prompts and seeds,
saved under ``samples/``) and, for prior preservation, the missing class images.

The validation pipeline is built for one validation and dropped after it. When the text encoder
is frozen, the validation prompts were encoded once with the other caches (``prompt_embeddings``)
and the text encoder itself is gone; the pipeline then runs from those embeddings.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from training import data as tdata

GUIDANCE = 6.0


def pipeline(parts, unet, text_encoder):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler.from_config(parts.noise_scheduler.config, use_karras_sigmas=True)
    pipe = StableDiffusionPipeline(vae=parts.vae, text_encoder=text_encoder, tokenizer=parts.tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_embeddings(parts, prompts: list[str], *, device, dtype):
    """Embeddings of each prompt, then of the empty prompt (classifier-free guidance's negative)."""
    return tdata.encode_texts(parts.text_encoder, parts.tokenizer, [*prompts, ""], device=device, dtype=dtype)


def class_images(config, parts, device, status, dtype=None) -> list[Path]:
    """Class images for prior preservation; the missing ones are generated with the base model
    (under autocast to ``dtype`` when mixed precision is on: a part that trains is fp32, the rest not)."""
    import torch

    folder = Path(config.class_dir)
    have = tdata.read_class_images(folder)
    if len(have) >= config.num_class_images:
        return have[: config.num_class_images]
    folder.mkdir(parents=True, exist_ok=True)
    pipe = pipeline(parts, parts.unet, parts.text_encoder)
    need = config.num_class_images - len(have)
    status.write("class_images", have=len(have), generating=need)
    mixed = dtype is not None and dtype != torch.float32
    autocast = torch.autocast(device.type, dtype=dtype) if mixed else contextlib.nullcontext()
    for i in range(need):
        g = torch.Generator(device).manual_seed(config.seed + 10_000 + i)
        with autocast:
            image = pipe(config.class_prompt, num_inference_steps=config.validation_inference_steps, generator=g,
                         height=config.resolution, width=config.resolution, guidance_scale=GUIDANCE).images[0]
        tmp = folder / f".class-{len(have) + i:05d}.png"
        image.save(tmp)
        tmp.replace(folder / f"class-{len(have) + i:05d}.png")
    return tdata.read_class_images(folder)[: config.num_class_images]


def validation_images(config, parts, unet, text_encoder, *, embeddings, out: Path, step: int, device,
                      precision: str, dtype) -> list[str]:
    """One image per validation prompt and seed, saved as ``samples/step-<step>-<i>.png``."""
    import torch

    from training.components import on_device

    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    names = []
    autocast = torch.autocast(device.type, dtype=dtype) if precision != "no" else contextlib.nullcontext()
    with torch.no_grad(), autocast, on_device(parts.vae, device):
        pipe = pipeline(parts, unet, text_encoder)
        for i, (prompt, seed) in enumerate(zip(config.prompts(), config.validation_seeds)):
            text = dict(prompt=prompt) if embeddings is None else dict(
                prompt_embeds=embeddings[i:i + 1], negative_prompt_embeds=embeddings[-1:])
            image = pipe(**text, num_inference_steps=config.validation_inference_steps,
                         generator=torch.Generator(device).manual_seed(int(seed)),
                         height=config.resolution, width=config.resolution, guidance_scale=GUIDANCE).images[0]
            name = f"step-{step:06d}-{i}.png"
            image.save(samples / name)
            names.append(f"samples/{name}")
        del pipe
    return names
