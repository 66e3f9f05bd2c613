"""The trainer: DreamBooth-style fine-tuning of SD 1.x, one LoRA per shot type.

``Trainer`` trains a LoRA (``--method lora``); the other methods are subclasses that change a few
hooks (``read_examples``, ``load_parts``, ``make_trainable``, ``text_cache``, ``after_update``,
``checkpoint_weights``, ``save_result``): textual inversion (``ti.py``), a full UNet fine-tune
extracted to a LoRA (``full.py``), motion LoRAs on clips (``motion.py``). ``trainer_class`` picks one.

Built on diffusers (models, noise scheduler, LR schedules, min-SNR), peft (LoRA layers via
``unet.add_adapter``) and accelerate (devices, mixed precision, gradient accumulation, multi-GPU,
checkpoints). ``Trainer.run`` reads top to bottom, one phase after another:

1. check inputs (settings, data, base model) before anything heavy loads     (components.py)
2. load the frozen components and add the LoRA adapter(s)                      (components.py)
3. cache the frozen parts once: VAE latents (both flips), text embeddings;    (caches.py)
   then drop what only the caches needed (VAE encoder, frozen text encoder)
4. optimizer, LR schedule, ``accelerator.prepare``; resume from a checkpoint  (checkpoints.py)
5. the loop: loss every step to ``status.jsonl``, validation images, rotating (step.py, samples.py,
   checkpoints, a clean stop on request (SIGTERM / cancel) that keeps one      status.py)
6. export both LoRA formats (atomically), optional Hub upload                  (export.py)

Determinism: data order, flips, latent draws, noise and timesteps come from one generator whose
state is checkpointed with the optimizer and LR schedule, so a resumed run continues the same loss
curve as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from training import caches as tcaches
from training import checkpoints, components, export, samples, step
from training import data as tdata
from training.config import TrainConfig
from training.status import StatusLog


@dataclass
class RunResult:
    status: str                      # "done" or "cancelled"
    step: int
    total_steps: int
    files: dict = field(default_factory=dict)
    losses: list = field(default_factory=list)


def train(config: TrainConfig, *, resume: str | None = None, should_stop=None) -> RunResult:
    """Train one LoRA (or embedding, ...); see the module docstring. Raises DreamShotError for bad input."""
    return trainer_class(config.method)(config, should_stop=should_stop).run(resume)


def trainer_class(method: str) -> type["Trainer"]:
    """The trainer of ``--method`` (imported only when asked for)."""
    if method == "ti":
        from training.ti import TextualInversionTrainer

        return TextualInversionTrainer
    if method == "full":
        from training.full import FullTrainer

        return FullTrainer
    if method == "motion":
        from training.motion import MotionTrainer

        return MotionTrainer
    return Trainer


class Trainer:
    def __init__(self, config: TrainConfig, *, should_stop=None):
        self.config = config.validate()
        self.out = Path(config.output_dir or f"./runs/{config.run_name}")
        self.should_stop = should_stop or (lambda: False)
        self.status = StatusLog(None)
        self.started_at = time.time()

    def run(self, resume: str | None = None) -> RunResult:
        self.check_inputs()
        self.setup()
        self.build_caches()
        self.prepare(resume)
        result = self.loop()
        if result.status == "done":
            result = self.export(result)
        self.accelerator.end_training()
        self.status.close()
        return result

    # ---- 1. inputs ------------------------------------------------------------------------------------
    def check_inputs(self) -> None:
        c = self.config
        self.examples = self.read_examples()
        components.check_base_model(c.base_model)
        components.check_optimizer(c.optimizer)
        self.precision = components.resolve_precision(c.mixed_precision)

    def read_examples(self) -> list[tdata.Example]:
        c = self.config
        return tdata.read_imagefolder(Path(c.dataset), shot=c.shot, phrase=c.phrase, template=c.prompt_template)

    # ---- 2. accelerator, frozen models, LoRA ----------------------------------------------------------------
    def setup(self) -> None:
        from accelerate.utils import set_seed

        self.accelerator = components.make_accelerator(self.config, self.precision, self.out)
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            self.status = StatusLog(self.out / "status.jsonl", echo=True)
        set_seed(self.config.seed)
        self.weight_dtype = components.weight_dtype(self.precision)
        self.device = self.accelerator.device
        self.parts = self.load_parts()
        self.trainable = self.make_trainable()

    def load_parts(self) -> components.Components:
        return components.load(self.config.base_model, self.precision, self.device)

    def make_trainable(self) -> list:
        """The models that train (what ``accelerate.prepare`` wraps): here the LoRA-adapted ones."""
        return components.add_adapters(self.parts, self.config, self.precision)

    @property
    def unet(self):
        return self.trainable[0]

    @property
    def text_encoder(self):
        return self.trainable[1] if self.config.train_text_encoder else self.parts.text_encoder

    @property
    def text_cache(self) -> bool:
        """Are the prompts' embeddings cached (the text encoder frozen)?"""
        return not self.config.train_text_encoder

    # ---- 3. caches ----------------------------------------------------------------------------------------
    def build_caches(self) -> None:
        self.caches = tcaches.build(self.config, self.parts, self.examples, out=self.out, device=self.device,
                                    dtype=self.weight_dtype, status=self.status, text_cache=self.text_cache)
        components.after_caching(self.parts, keep_text_encoder=not self.text_cache, device=self.device)

    # ---- 4. optimizer, schedule, resume ---------------------------------------------------------------------
    def prepare(self, resume: str | None) -> None:
        import torch
        from diffusers.optimization import get_scheduler

        c, acc = self.config, self.accelerator
        self.total_steps = c.total_steps(len(self.examples), acc.num_processes)
        groups = self.param_groups()
        self.params = [p for group in groups for p in group["params"]]
        # One fused/multi-tensor update for all trained tensors, not one small kernel per tensor.
        self.optimizer = components.make_optimizer(groups, c, self.device)
        self.lr_scheduler = get_scheduler(c.lr_scheduler, optimizer=self.optimizer,
                                          num_warmup_steps=c.lr_warmup_steps * acc.num_processes,
                                          num_training_steps=self.total_steps * acc.num_processes)
        prepared = acc.prepare(*self.trainable)
        self.trainable = list(prepared) if isinstance(prepared, (list, tuple)) else [prepared]
        self.optimizer, self.lr_scheduler = acc.prepare(self.optimizer, self.lr_scheduler)
        self.state = checkpoints.TrainState(torch.Generator(self.device).manual_seed(c.seed * 7919 + acc.process_index))
        checkpoints.register(acc, self.state, self.checkpoint_weights())
        self.order = step.DataOrder(c.seed, c.batch_size, acc.num_processes, acc.process_index, self.device)
        if resume:
            self._resume(resume)

    def param_groups(self) -> list[dict]:
        c = self.config
        groups = [{"params": [p for p in self.unet.parameters() if p.requires_grad], "lr": c.learning_rate}]
        if c.train_text_encoder:
            groups.append({"params": [p for p in self.text_encoder.parameters() if p.requires_grad],
                           "lr": c.text_encoder_lr or c.learning_rate})
        return groups

    def checkpoint_weights(self) -> checkpoints.Weights:
        return checkpoints.Weights(self.accelerator, lambda: self.trainable)

    def _resume(self, resume: str) -> None:
        ckpt = checkpoints.find_checkpoint(self.out, resume)
        if ckpt is None:
            self.status.write("resume", checkpoint=None, note="no checkpoint yet: starting from step 0")
        else:
            self.accelerator.load_state(str(ckpt))
            self.status.write("resume", checkpoint=ckpt.name, step=self.state.step)

    # ---- 5. the loop ----------------------------------------------------------------------------------------
    def loop(self) -> RunResult:
        c, acc = self.config, self.accelerator
        result = RunResult("done", self.state.step, self.total_steps)
        self.status.write("start", step=self.state.step, total_steps=self.total_steps, examples=len(self.examples),
                          precision=self.precision, device=str(self.device), processes=acc.num_processes)
        for model in self.trainable:
            model.train()
        clock = StepClock()
        while self.state.step < self.total_steps:
            loss = self.optimizer_step()
            self.state.step += 1
            self.log_step(loss, clock.lap(), result)
            finished = self.state.step >= self.total_steps
            if c.validation_steps and self.state.step % c.validation_steps == 0 and not finished:
                self.validate()
            checkpointed = bool(c.checkpoint_steps and self.state.step % c.checkpoint_steps == 0)
            if checkpointed and not finished:
                self.checkpoint()
            if not finished and self._stop_requested():
                if not checkpointed:
                    self.checkpoint()
                self.status.write("cancelled", step=self.state.step, total_steps=self.total_steps)
                result.status, result.step = "cancelled", self.state.step
                return result
            clock.restart()  # validation/checkpoint time is not step time
        result.step = self.state.step
        return result

    def optimizer_step(self) -> float:
        """One optimizer step (``grad_accum`` micro-steps); the loss averaged over processes."""
        c, acc = self.config, self.accelerator
        total = 0.0
        for _ in range(c.grad_accum):
            with acc.accumulate(*self.trainable):
                loss = self.micro_step()
                acc.backward(loss)
                if acc.sync_gradients and c.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.params, c.max_grad_norm)
                self.optimizer.step()
                self.after_update()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.micro += 1
                total += loss.detach()
        value = float(acc.gather(total.reshape(1) / c.grad_accum).mean())
        if not math.isfinite(value):
            raise FloatingPointError(f"The loss became {value} at step {self.state.step + 1}: lower the "
                                     "learning rate (or use bf16 instead of fp16).")
        return value

    def micro_step(self):
        import torch

        c, gen, cache = self.config, self.state.generator, self.caches
        draw = dict(generator=gen, random_flip=c.random_flip, text_encoder=self.text_encoder, dtype=self.weight_dtype)
        idx = self.order.indices(self.state.micro, len(self.examples))
        latents, emb = step.draw_inputs(cache.latents, cache.text_emb, cache.text_ids, idx, **draw)
        if c.prior_preservation:
            cidx = self.order.indices(self.state.micro, len(cache.class_ids))
            cl, ce = step.draw_inputs(cache.class_latents, cache.class_emb, cache.class_ids, cidx, **draw)
            latents, emb = torch.cat([latents, cl]), torch.cat([emb, ce])
        sched = self.parts.noise_scheduler
        noisy, timesteps, target = step.noised(latents, sched, generator=gen, noise_offset=c.noise_offset)
        pred = self.unet(noisy, timesteps, emb, return_dict=False)[0]
        if not c.prior_preservation:
            return step.loss(pred, target, timesteps, sched, c.snr_gamma)
        (pred, pred_prior), (target, target_prior) = pred.chunk(2), target.chunk(2)
        prior = step.loss(pred_prior, target_prior, timesteps.chunk(2)[1], sched, 0.0)
        return step.loss(pred, target, timesteps.chunk(2)[0], sched, c.snr_gamma) + c.prior_loss_weight * prior

    def after_update(self) -> None:
        """Called after each optimizer update (textual inversion restores the other tokens' rows)."""

    def log_step(self, loss: float, sec: tuple[float, float], result: RunResult) -> None:
        last, mean = sec
        lr = self.lr_scheduler.get_last_lr()[0]
        self.status.write("step", step=self.state.step, total_steps=self.total_steps, loss=loss, lr=lr,
                          step_s=round(last, 5), it_s=round(1 / mean, 3) if mean > 0 else None,
                          eta_s=round((self.total_steps - self.state.step) * mean, 1))
        result.losses.append(loss)
        if self.accelerator.trackers:
            self.accelerator.log({"loss": loss, "lr": lr}, step=self.state.step)

    def _stop_requested(self) -> bool:
        import torch

        flag = bool(self.should_stop())
        if self.accelerator.num_processes > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=self.device)
            flag = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        return flag

    def checkpoint(self) -> None:
        checkpoints.save(self.accelerator, self.out, self.state.step, self.config.checkpoints_keep, self.status)

    def validate(self, final: bool = False) -> None:
        """Images of the fixed validation prompts and seeds, saved under samples/."""
        acc = self.accelerator
        if not acc.is_main_process:
            return
        for model in self.trainable:
            model.eval()
        te = None if self.text_cache else acc.unwrap_model(self.text_encoder)
        names = samples.validation_images(self.config, self.parts, acc.unwrap_model(self.unet), te,
                                          embeddings=self.caches.validation_emb, out=self.out, step=self.state.step,
                                          device=self.device, precision=self.precision, dtype=self.weight_dtype)
        for model in self.trainable:
            model.train()
        self.status.write("validation", step=self.state.step, images=names, prompts=self.config.prompts(), final=final)

    # ---- 6. export ----------------------------------------------------------------------------------------
    def export(self, result: RunResult) -> RunResult:
        acc, c = self.accelerator, self.config
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return result
        self.validate(final=True)
        dataset_hash = tdata.dataset_hash(self.examples)
        paths, extra = self.save_result(dataset_hash)
        result.files = {key: path.name for key, path in paths.items()}
        if c.push_to_hub:
            result.files["hub"] = self.push(*paths.values())
        self.status.write("done", step=result.step, total_steps=self.total_steps, files=result.files,
                          dataset_hash=dataset_hash, examples=len(self.examples), method=c.method,
                          final_loss=result.losses[-1] if result.losses else None, **extra)
        return result

    def save_result(self, dataset_hash: str) -> tuple[dict[str, Path], dict]:
        """Write the trained result (atomically); returns its files and extra fields of the "done" event."""
        acc, c = self.accelerator, self.config
        unet = acc.unwrap_model(self.unet)
        te = acc.unwrap_model(self.text_encoder) if c.train_text_encoder else None
        diffusers_file = export.save_diffusers(self.out, unet, te)
        meta = export.kohya_metadata(config=c, base_model=c.base_model, dataset_hash=dataset_hash,
                                     num_images=len(self.examples), steps=self.total_steps,
                                     started_at=self.started_at, finished_at=time.time())
        kohya_file = export.save_kohya(self.out / f"{c.run_name}.safetensors", unet, te, metadata=meta)
        return {"diffusers": diffusers_file, "kohya": kohya_file}, {}

    def push(self, *files: Path) -> str | None:
        """Upload to the Hub; the token comes from HF_TOKEN (environment) only."""
        token = os.environ.get("HF_TOKEN") or None
        if not token:
            self.status.write("warning", message="--push-to-hub given but HF_TOKEN is not set: not uploaded.")
            return None
        try:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
            repo = self.config.push_to_hub
            api.create_repo(repo, exist_ok=True, private=True)
            for path in (*files, self.out / "config.json"):
                if path.is_file():
                    api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name, repo_id=repo)
            return f"https://huggingface.co/{repo}"
        except Exception as exc:  # the LoRA is trained and saved; an upload failure must not undo that
            self.status.write("warning", message=f"Upload to the Hub failed: {exc.__class__.__name__}")
            return None


class StepClock:
    """Seconds of the last step and the mean of the last 20 (the first, warm-up step left out)."""

    def __init__(self):
        self.recent: list[float] = []
        self.last = time.perf_counter()

    def lap(self) -> tuple[float, float]:
        now = time.perf_counter()
        self.recent = (self.recent + [now - self.last])[-20:]
        self.last = now
        window = self.recent[1:] or self.recent
        return self.recent[-1], sum(window) / len(window)

    def restart(self) -> None:
        self.last = time.perf_counter()
