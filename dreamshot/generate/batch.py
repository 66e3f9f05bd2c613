"""Running images in denoising batches on the shared pipeline.

A *group* is a set of requests that share the settings a batch must share (size, steps, sampler,
CFG and LoRA mix); their images are cut into batches of ``batch_size``. Each image of a batch keeps
what makes it reproducible on its own: its initial latent noise comes from its own CPU
``torch.Generator`` seeded with its seed, and the SDE sampler's Brownian noise from its own tree
(``samplers.seed_scheduler``). So a batch image equals the image of the same seed made alone up to
floating-point noise (batched kernels may round differently), and the same batch run again is
bit-identical.

With a ControlNet (``req.control``) a group also shares the ControlNet, its scale and start/end; its
images run on the ControlNet pipeline built from the same shared components (``control.py``), each
with its own request's control image, made once per request before the service lock is taken.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

from dreamshot.generate import control as controlnet
from dreamshot.generate.control_models import controls
from dreamshot.generate.pngmeta import format_number
from dreamshot.generate.request import GenerationRequest
from dreamshot.generate.results import GeneratedImage
from dreamshot.generate.samplers import steps_shown

MAX_BATCH = 16            # beyond this a GPU gains nothing per image, and a cancel loses more
CPU_BATCH = 4             # on a CPU a batch saves the per-call overhead, not much compute
BYTES_PER_PIXEL = 4096    # peak activation memory per image pixel at fp16 (UNet with CFG + VAE
                          # decode), rounded up: SD 1.5 at 512² ~ 1 GiB per image
MEMORY_SHARE = 0.8        # of the free GPU memory a batch may plan on


@dataclass
class Item:
    """One image to make: the ``slot``-th request of the call, with its seed."""
    slot: int
    request: GenerationRequest
    prompt: str
    seed: int


def group_key(req: GenerationRequest, mix: list) -> tuple:
    """What the images of one batch must share."""
    c = req.control
    return (req.width, req.height, req.steps, req.sampler, req.cfg,
            tuple((info.name, info.sha256, float(w)) for info, w in mix),
            (c.kind, c.model, c.scale, c.start, c.end) if c is not None else None)


def groups(requests: list, plans: list) -> list[list[int]]:
    """Indices of ``requests`` grouped by ``group_key``, groups in first-seen order."""
    out: dict = {}
    for index, (req, (_, mix)) in enumerate(zip(requests, plans)):
        out.setdefault(group_key(req, mix), []).append(index)
    return list(out.values())


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def auto_batch_size(pipe, width: int, height: int) -> int:
    """How many images of this size one batch may hold: from the free memory on a GPU (a
    conservative estimate per image), ``CPU_BATCH`` on a CPU; at most ``MAX_BATCH``."""
    import torch

    device = pipe._execution_device
    if device.type != "cuda":
        return CPU_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    element = torch.finfo(pipe.unet.dtype).bits // 8
    per_image = width * height * BYTES_PER_PIXEL * element / 2
    return max(1, min(MAX_BATCH, int(free * MEMORY_SHARE // per_image)))


def encode_prompts(pipe, pairs: list[tuple], do_cfg: bool):
    """(prompt embeddings, negative embeddings or None) for [(prompt, negative)], each distinct pair
    encoded once (a batch of one prompt encodes it once, as a one-image call does)."""
    import torch

    device = pipe._execution_device
    cache: dict = {}
    for pair in dict.fromkeys(pairs):
        prompt, negative = pair
        cache[pair] = pipe.encode_prompt(prompt, device, 1, do_cfg, negative or None)
    positive = torch.cat([cache[p][0] for p in pairs])
    negative = torch.cat([cache[p][1] for p in pairs]) if do_cfg else None
    return positive, negative


def initial_noise(pipe, generators: list, width: int, height: int):
    """Each image's starting noise drawn in float32 from its seed's CPU generator, then cast to the
    pipeline's dtype: what diffusers draws itself in float32 (bit for bit), and the same noise in
    float16/bfloat16 (drawn in those dtypes, torch's CPU sampler fills some numbers differently), so a
    seed means the same picture whatever ``--dtype``, as in AUTOMATIC1111."""
    import torch

    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    noise = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
    return noise.to(pipe._execution_device, pipe.unet.dtype)


def run_batch(pipe, scheduler, items: list[Item], job, on_step, control: dict | None = None) -> list | None:
    """Denoise and decode one batch; returns PIL images in ``items`` order, None when the job was
    cancelled. ``on_step(step, total)`` gets the pipeline's 0-based step (no tensor is read: no
    device synchronisation per step). ``control``: the ControlNet pipeline's extra arguments."""
    import torch

    req = items[0].request
    do_cfg = req.cfg > 1.0
    embeds, negative = encode_prompts(pipe, [(it.prompt, it.request.negative_prompt) for it in items], do_cfg)
    generators = [torch.Generator(device="cpu").manual_seed(it.seed) for it in items]

    def on_step_end(pipeline, step, timestep, kwargs):
        on_step(step, getattr(pipeline, "num_timesteps", None) or req.steps)
        if job.cancelled:
            pipeline._interrupt = True
        return kwargs

    pipe.scheduler = scheduler
    latents = initial_noise(pipe, generators, req.width, req.height)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ta>=t0.*")
        warnings.filterwarnings("ignore", message=".*Should have.*")
        out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=req.steps,
                   guidance_scale=req.cfg, width=req.width, height=req.height,
                   generator=generators if len(generators) > 1 else generators[0], latents=latents,
                   callback_on_step_end=on_step_end, **(control or {}))
    if job.cancelled:
        return None
    return list(out.images)


class BatchRun:
    """The batches of one ``GenerationService.generate_many`` call: progress over all images, PNGs
    saved in the background, each result's share of the time."""

    def __init__(self, svc, job, results: list, template: str, span: tuple, save: bool):
        self.svc, self.job, self.results, self.template, self.save = svc, job, results, template, save
        self.lo, self.hi = span
        self.total = sum(r.request.num_images for r in results)
        self.done = 0
        self.saved_seeds: list = []
        self.groups = len(groups([r.request for r in results], [(r.prompt, r.loras) for r in results]))
        self.models = controls(svc.studio) if any(r.request.control for r in results) else None
        self.sources: dict = {}
        made: dict = {}
        for result in results:   # load the ControlNets and make the control images before the lock
            control = result.request.control
            if control is not None:
                self.sources[id(result)] = source = self.models.source(control.kind, control.model)
                self.models.controlnet(source)
                key = (id(control.image), control.kind, control.low, control.high, control.preprocessed,
                       result.request.width, result.request.height)   # a compare's two sides: made once
                if key not in made:
                    made[key] = self.models.prepare(control, result.request.width, result.request.height)
                result.control_image = made[key]

    def group(self, indices: list[int], batch_size: int | None) -> bool:
        """Run one group's batches; False when the job was cancelled."""
        svc, first = self.svc, self.results[indices[0]]
        svc.configure(first.loras)
        items = [Item(i, self.results[i].request, self.results[i].prompt, seed)
                 for i in indices for seed in self.results[i].request.seeds]
        size = int(batch_size or svc.batch_size_for(first.request))
        label = self._group_label(first) if self.groups > 1 else ""
        pipe = svc.pipe if first.request.control is None else self.models.pipeline(self.sources[id(first)])
        for chunk in chunks(items, size):
            t0 = time.perf_counter()
            scheduler = svc.scheduler(first.request.sampler, [it.seed for it in chunk])
            images = run_batch(pipe, scheduler, chunk, self.job, self._reporter(chunk, label), self._control(chunk))
            if images is None:
                for i in indices:
                    self.results[i].cancelled = True
                return False
            share = (time.perf_counter() - t0) / len(chunk)
            for item, image in zip(chunk, images):
                self._keep(item, image, share)
            self.done += len(chunk)
        return True

    def _control(self, chunk: list) -> dict | None:
        control = chunk[0].request.control
        if control is None:
            return None
        return self.models.pipeline_kwargs(control, [self.results[it.slot].control_image for it in chunk])

    def _keep(self, item: Item, image, seconds: float) -> None:
        result = self.results[item.slot]
        text = self.svc.parameters_text(result.request, result.prompt, result.loras, item.seed, self.template)
        path = control_path = None
        if self.save:
            repeat = self.saved_seeds.count(item.seed)        # the same seed twice in one call
            self.saved_seeds.append(item.seed)
            path = self.svc.output_path(item.seed, repeat)
            control_path = path.with_name(f"{path.stem}-control.png")
        if result.request.control is not None:
            stored = control_path.relative_to(self.svc.studio.settings.outputs_dir).as_posix() if control_path else None
            text = controlnet.with_control(text, result.request.control, self.sources[id(result)], stored)
        generated = GeneratedImage(image, item.seed, text)
        result.images.append(generated)
        result.seconds += seconds
        if self.save:
            control = (result.control_image, control_path) if result.request.control is not None else None
            generated.saved = self.svc.save_later(save_outputs, generated, path, control)

    def _group_label(self, result) -> str:
        names = ", ".join(f"{info.name} α={format_number(w)}" for info, w in result.loras)
        return f"{names or 'base model'} · "

    def _reporter(self, chunk: list, label: str):
        steps = chunk[0].request.steps
        first, last = self.done + 1, self.done + len(chunk)
        if self.total == 1:
            what = ""
        elif first == last:
            what = f"image {first}/{self.total}: "
        else:
            what = f"images {first}-{last}/{self.total}: "
        width = (self.hi - self.lo) / self.total

        def on_step(step: int, total: int) -> None:
            shown = steps_shown(step, total, steps)
            fraction = self.lo + width * (self.done + len(chunk) * shown / steps)
            self.job.report(fraction, f"{label}{what}step {shown}/{steps}")

        return on_step

    def finish(self) -> None:
        """Mark the results of a stopped call. The PNGs are still being written: ``image.path``
        waits for its file."""
        for result in self.results:
            result.cancelled = result.cancelled or self.job.cancelled


def save_outputs(generated: GeneratedImage, path, control: tuple | None):
    """Write the PNG; with ``control`` = (control image, its path) the control image beside it
    (``<stem>-control.png``) first. Returns the PNG's path."""
    if control is not None:
        image, control_path = control
        control_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = control_path.with_name(control_path.name + ".part")
        image.save(tmp, format="PNG")
        tmp.replace(control_path)
    return generated.save(path)
