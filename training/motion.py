"""Shot LoRAs trained on clips (CameraDiff's setup): ``--method motion``.

The same LoRA as a still-trained shot LoRA - on the UNet's *spatial* cross-attention - but learned
through AnimateDiff: the base UNet becomes a ``UNetMotionModel`` with a motion adapter (``--motion-adapter
ID|DIR``, default as the Video tab: the ``DREAMSHOT_MOTION_ADAPTER`` variable, ``demo`` on the demo
model, else guoyww's v1-5-3), the motion modules frozen and left out of the LoRA. Each step denoises
``--clip-frames`` frames of a labeled clip together, so the LoRA learns the shot as it looks in motion.

Everything else is ``training.trainer.Trainer``: the data folder is an imagefolder of *clips*
(``labeling.clips.export_clips``: ``clips/*.mp4`` + ``metadata.jsonl``); per clip, N frames evenly
spread over it are extracted once (``<run>/clip-frames``) and their VAE latents cached (one row per
clip: ``[N·4, h, w]``, so flips and the disk cache work unchanged); the same status events,
validation (short GIF clips), checkpoints, cancel/resume and exports (diffusers + kohya). The LoRA's
keys are the 2D UNet's, so it loads in Generate as well as in the Video clip pipeline.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dreamshot.errors import InvalidInput

from training import components, step
from training import data as tdata
from training.trainer import Trainer

DEFAULT_CLIP_FRAMES = 8
MAX_CLIP_FRAMES = 32
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")


def spatial_targets(targets: list[str]) -> str:
    """A peft regex for ``targets`` (e.g. ``attn2.to_q``) outside the motion modules."""
    alternatives = "|".join(re.escape(t) for t in targets)
    return rf"^(?!.*motion_modules).*\.({alternatives})$"


class _SpatialOnly:
    """The run's config, with the LoRA targets restricted to the spatial layers."""

    def __init__(self, config):
        self._config = config

    def __getattr__(self, name):
        return getattr(self._config, name)

    @property
    def target_modules(self):
        return spatial_targets(self._config.target_modules)


def motion_adapter_source(config) -> str:
    """``--motion-adapter``, else the Video tab's default for this base model."""
    from dreamshot.demo_model import is_demo_model
    from dreamshot.video.clip import DEFAULT_MOTION_ADAPTER, DEMO

    chosen = (config.motion_adapter or os.environ.get("DREAMSHOT_MOTION_ADAPTER", "")).strip()
    if chosen:
        return chosen
    base = Path(config.base_model)
    return DEMO if base.exists() and is_demo_model(base) else DEFAULT_MOTION_ADAPTER


def clip_frames(config) -> int:
    n = int(config.clip_frames or DEFAULT_CLIP_FRAMES)
    if not 2 <= n <= MAX_CLIP_FRAMES:
        raise InvalidInput(f"--clip-frames must be between 2 and {MAX_CLIP_FRAMES} (got {n}).")
    return n


def extract_frames(clip: Path, folder: Path, n: int) -> list[Path]:
    """``n`` frames evenly spread over ``clip`` as PNGs in ``folder`` (kept: a resumed run reuses them)."""
    import av
    import numpy as np

    wanted = [folder / f"{j:02d}.png" for j in range(n)]
    if all(p.is_file() for p in wanted):
        return wanted
    try:
        with av.open(str(clip)) as container:
            images = [f.to_image() for f in container.decode(container.streams.video[0])]
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise InvalidInput(f"Cannot read the training clip {clip.name}: {exc.__class__.__name__}") from None
    if not images:
        raise InvalidInput(f"The training clip {clip.name} has no frames.")
    folder.mkdir(parents=True, exist_ok=True)
    for j, index in enumerate(np.linspace(0, len(images) - 1, n).round().astype(int)):
        tmp = wanted[j].with_suffix(".part")
        images[index].convert("RGB").save(tmp, format="PNG")
        tmp.replace(wanted[j])
    return wanted


class MotionTrainer(Trainer):
    """A shot LoRA trained on clips through AnimateDiff (motion modules frozen); see the module doc."""

    def check_inputs(self) -> None:
        c = self.config
        if c.train_text_encoder or c.prior_preservation:
            raise InvalidInput("--method motion trains the UNet's LoRA only: leave out --train-text-encoder "
                               "and --prior-preservation.")
        self.frames = clip_frames(c)
        self.adapter_source = motion_adapter_source(c)
        super().check_inputs()

    def read_examples(self) -> list[tdata.Example]:
        examples = super().read_examples()
        not_clips = [e.path.name for e in examples if e.path.suffix.lower() not in VIDEO_SUFFIXES]
        if not_clips:
            raise InvalidInput(f"--method motion trains on clips; {len(not_clips)} file(s) are not videos, e.g. "
                               f"{not_clips[0]} (export clips with `python -m labeling export-clips`).")
        return examples

    def make_trainable(self) -> list:
        """The base UNet + the motion adapter as a UNetMotionModel (all frozen), LoRA on its spatial layers."""
        from diffusers import UNetMotionModel

        from dreamshot.video.clip import load_motion_adapter, quiet

        adapter = load_motion_adapter(self.adapter_source, self.parts.unet)
        with quiet():
            motion = UNetMotionModel.from_unet2d(self.parts.unet, adapter)
            motion.requires_grad_(False)
            motion.to(self.device, dtype=self.parts.unet.dtype)
        self.parts.unet = motion
        trainable = components.add_adapters(self.parts, _SpatialOnly(self.config), self.precision)
        self.status.write("motion", adapter=self.adapter_source, clip_frames=self.frames,
                          lora_layers=sum(1 for n, _ in motion.named_modules() if n.endswith("lora_A")))
        return trainable

    def build_caches(self) -> None:
        """Frame latents of every clip (the base trainer's cache over the extracted frames), one row per clip."""
        clips = self.examples
        frames = []
        for k, ex in enumerate(clips):
            for path in extract_frames(ex.path, self.out / "clip-frames" / f"{k:05d}", self.frames):
                frames.append(tdata.Example(path, ex.text))
        self.examples = frames
        try:
            super().build_caches()
        finally:
            self.examples = clips
        n, lat = len(clips), self.caches.latents
        for name in ("mean", "std", "flipped_mean", "flipped_std"):
            t = getattr(lat, name)
            if t is not None:
                setattr(lat, name, t.reshape(n, -1, *t.shape[2:]))     # [n·N, C, h, w] -> [n, N·C, h, w]
        self.caches.text_emb = self.caches.text_emb[:: self.frames] if self.caches.text_emb is not None else None
        self.caches.text_ids = self.caches.text_ids[:: self.frames]

    def micro_step(self):
        c, gen, cache = self.config, self.state.generator, self.caches
        idx = self.order.indices(self.state.micro, len(self.examples))
        latents, emb = step.draw_inputs(cache.latents, cache.text_emb, cache.text_ids, idx, generator=gen,
                                        random_flip=c.random_flip, text_encoder=None, dtype=self.weight_dtype)
        sched = self.parts.noise_scheduler
        noisy, timesteps, target = step.noised(latents, sched, generator=gen, noise_offset=c.noise_offset)
        emb = emb.repeat_interleave(self.frames, dim=0)   # one text row per frame, as AnimateDiffPipeline does
        pred = self.unet(self._video(noisy), timesteps, emb, return_dict=False)[0]
        return step.loss(self._flat(pred), target, timesteps, sched, c.snr_gamma)

    def _video(self, x):
        """[b, N·C, h, w] -> [b, C, N, h, w] (AnimateDiff's layout)."""
        b, nc, h, w = x.shape
        return x.reshape(b, self.frames, nc // self.frames, h, w).permute(0, 2, 1, 3, 4)

    @staticmethod
    def _flat(x):
        b, ch, n, h, w = x.shape
        return x.permute(0, 2, 1, 3, 4).reshape(b, n * ch, h, w)

    def validate(self, final: bool = False) -> None:
        """A short GIF clip per validation prompt and seed, saved under samples/."""
        acc = self.accelerator
        if not acc.is_main_process:
            return
        self.unet.eval()
        names = validation_clips(self.config, self.parts, acc.unwrap_model(self.unet), self.caches.validation_emb,
                                 out=self.out, step=self.state.step, frames=self.frames, device=self.device,
                                 precision=self.precision, dtype=self.weight_dtype)
        self.unet.train()
        self.status.write("validation", step=self.state.step, images=names, prompts=self.config.prompts(), final=final)


def validation_clips(config, parts, unet, embeddings, *, out: Path, step: int, frames: int, device,
                     precision: str = "no", dtype=None) -> list[str]:
    """One GIF clip per validation prompt and seed (AnimateDiff on the trained UNet, from the cached
    prompt embeddings), saved as ``samples/step-<step>-<i>.gif``; autocast under mixed precision."""
    import contextlib

    import torch
    from diffusers import AnimateDiffPipeline, DDIMScheduler

    from dreamshot.video.clip import quiet
    from training.components import on_device

    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    names = []
    scheduler = DDIMScheduler.from_config(parts.noise_scheduler.config, beta_schedule="linear", clip_sample=False,
                                          timestep_spacing="linspace", steps_offset=1)
    autocast = torch.autocast(device.type, dtype=dtype) if precision != "no" else contextlib.nullcontext()
    with torch.no_grad(), autocast, on_device(parts.vae, device), quiet():
        pipe = AnimateDiffPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                   unet=unet, motion_adapter=None, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        for i, seed in enumerate(config.validation_seeds):
            out_frames = pipe(prompt_embeds=embeddings[i:i + 1].to(unet.dtype),
                              negative_prompt_embeds=embeddings[-1:].to(unet.dtype), num_frames=frames,
                              num_inference_steps=config.validation_inference_steps, guidance_scale=6.0,
                              height=config.resolution, width=config.resolution, output_type="pil",
                              generator=torch.Generator("cpu").manual_seed(int(seed))).frames[0]
            name = f"step-{step:06d}-{i}.gif"
            out_frames[0].save(samples / name, save_all=True, append_images=out_frames[1:], duration=125, loop=0)
            names.append(f"samples/{name}")
        del pipe
    return names


def export_run_clips(studio, shot: str, data_dir: Path, run_id: int) -> str:
    """The job runner's data step for a motion run: the labeled ``shot`` clips into ``data_dir``
    (staged next to the studio's exports, then moved in); returns the line for the run's log."""
    import shutil

    from labeling.clips import export_clips, refuse_empty

    staging = Path(studio.settings.data_dir) / "exports" / f".run-{run_id}-clips"
    try:
        report = export_clips(studio, staging, shots=[shot])
        refuse_empty(report, shot)
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.move(str(staging), str(data_dir))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return (f"Exported {report.count} labeled {shot} clip(s) for motion training"
            + (f" ({report.uncaptioned} without a caption)" if report.uncaptioned else "")
            + (f"; {report.without_clip} labeled still(s) have no clip" if report.without_clip else "") + ".")
