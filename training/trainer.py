"""The LoRA trainer: DreamBooth-style fine-tuning of SD 1.x, one LoRA per shot type.

Built on diffusers (models, noise scheduler, LR schedules, min-SNR), peft (LoRA layers via
``unet.add_adapter``) and accelerate (devices, mixed precision, gradient accumulation, multi-GPU,
checkpoints). The phases, as in diffusers' training scripts:

1. check inputs (settings, data, base model) before anything heavy loads
2. load the frozen components and add the LoRA adapter(s)
3. cache the frozen parts once: VAE latents (both flips) and text embeddings
4. optimizer, LR schedule, ``accelerator.prepare``; resume from a checkpoint when asked
5. the loop: loss every step to ``status.jsonl``, validation images, rotating checkpoints,
   a clean stop on request (SIGTERM / cancel) that keeps a checkpoint
6. export both LoRA formats (atomically), optional Hub upload

Determinism: data order, flips, latent draws, noise and timesteps come from one generator whose
state is checkpointed with the optimizer and LR schedule, so a resumed run continues the same loss
curve as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from dreamshot.errors import InvalidInput, ModelLoadError

from training import data as tdata
from training import export
from training.config import TrainConfig

log = logging.getLogger("training")

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
LORA_STATE = "lora_state.safetensors"
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


# ---- status file ------------------------------------------------------------------------------
class StatusLog:
    """Appends one JSON object per line to ``status.jsonl`` (main process only)."""

    def __init__(self, path: Path | None, echo: bool = False):
        self.path = path
        self.echo = echo  # also print a readable line (the run's log)
        self._fh = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields) -> None:
        if self.path is None:
            return
        line = json.dumps({"event": event, "time": round(time.time(), 3), **fields})
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(line + "\n")
        self._fh.flush()  # readers (the job runner, the tab) see every complete line at once
        if self.echo:
            print(human(event, fields), flush=True)


def human(event: str, f: dict) -> str:
    """One readable log line for a status event."""
    if event == "step":
        speed = f" {f['it_s']:.2f} it/s, ETA {f['eta_s']:.0f}s" if f.get("it_s") else ""
        return f"step {f['step']}/{f['total_steps']} loss {f['loss']:.4f} lr {f['lr']:.2e}{speed}"
    if event == "error":
        return f"ERROR ({f.get('kind')}): {f.get('message')}"
    details = ", ".join(f"{k}={v}" for k, v in f.items() if k not in ("prompts",) and v is not None)
    return f"{event}: {details}"


def read_status(path: Path) -> list[dict]:
    events = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return events
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line being written right now
    return events


# ---- checkpoints ---------------------------------------------------------------------------------
def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT.match(p.name)) and p.is_dir()]
    return sorted(found)


def find_checkpoint(output_dir: Path, resume: str) -> Path | None:
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise InvalidInput(f"No checkpoint folder {resume!r} (use --resume latest).")
    return path


@dataclass
class TrainState:
    """What a checkpoint must carry besides models/optimizer/schedule: counters and the generator."""
    generator: object
    step: int = 0
    micro: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "micro": self.micro, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.micro = int(state["step"]), int(state["micro"])
        self.generator.set_state(state["rng"])


@dataclass
class RunResult:
    status: str                      # "done" or "cancelled"
    step: int
    total_steps: int
    files: dict = field(default_factory=dict)
    losses: list = field(default_factory=list)


# ---- phase 1: inputs ------------------------------------------------------------------------------
def check_base_model(source: str) -> None:
    if not source:
        raise InvalidInput("No base model given (--base-model DIR|HUB_ID).")
    if Path(source).exists():
        from dreamshot.models import check_sd1_folder

        check_sd1_folder(Path(source))


def resolve_precision(config: TrainConfig) -> str:
    import torch

    mp = config.mixed_precision
    cuda = torch.cuda.is_available()
    if mp == "auto":
        return "fp16" if cuda else "no"
    if mp == "fp16" and not cuda:
        raise InvalidInput("--mixed-precision fp16 needs a CUDA GPU; use 'no' (or 'auto') on a CPU.")
    return mp


# ---- the trainer --------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, config: TrainConfig, *, should_stop=None):
        self.config = config.validate()
        self.out = Path(config.output_dir or f"./runs/{config.run_name}")
        self.should_stop = should_stop or (lambda: False)
        self.status = StatusLog(None)
        self.started_at = time.time()

    # ---- phase 1 ----------------------------------------------------------------------------------
    def check_inputs(self):
        c = self.config
        self.examples = tdata.read_imagefolder(Path(c.dataset), shot=c.shot, phrase=c.phrase)
        check_base_model(c.base_model)
        self.precision = resolve_precision(c)

    # ---- phase 2 ----------------------------------------------------------------------------------
    def setup(self):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        c = self.config
        trackers = "tensorboard" if _has_tensorboard() else None
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()  # a second run in one process (tests, benchmark) may change precision
        self.accelerator = Accelerator(
            mixed_precision=self.precision, gradient_accumulation_steps=c.grad_accum, log_with=trackers,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
        )
        acc = self.accelerator
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            self.status = StatusLog(self.out / "status.jsonl", echo=True)
            if trackers:
                acc.init_trackers(c.run_name)
        set_seed(c.seed)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)
        self.device = acc.device

    def load_models(self):
        import torch
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        src = self.config.base_model
        local = Path(src).exists()
        try:
            kw = dict(local_files_only=local)
            vae_dtype = torch.float32 if self.precision == "fp16" else self.weight_dtype  # fp16 VAEs overflow
            self.tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
            self.text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", dtype=self.weight_dtype, **kw)
            self.vae = AutoencoderKL.from_pretrained(src, subfolder="vae", dtype=vae_dtype, **kw)
            self.unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", dtype=self.weight_dtype, **kw)
            self.noise_scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise ModelLoadError(f"Cannot load the base model {src!r}: {exc}") from None
        if self.tokenizer.model_max_length > 1000:
            self.tokenizer.model_max_length = 77
        from dreamshot.demo_model import is_demo_model
        from dreamshot.models import SD1_CROSS_ATTENTION_DIM

        if not (local and is_demo_model(Path(src))) and self.unet.config.cross_attention_dim != SD1_CROSS_ATTENTION_DIM:
            raise ModelLoadError(f"{src} is not a Stable Diffusion 1.x model (cross_attention_dim "
                                 f"{self.unet.config.cross_attention_dim}, SD 1.x has 768).")
        for model in (self.vae, self.text_encoder, self.unet):
            model.requires_grad_(False)
        for model in (self.vae, self.text_encoder, self.unet):
            model.to(self.device)

    def add_adapters(self):
        from peft import LoraConfig

        c = self.config
        # "gaussian" init of A and zeros for B: the LoRA starts as a no-op, as in diffusers' scripts.
        self.unet.add_adapter(LoraConfig(r=c.rank, lora_alpha=c.alpha, init_lora_weights="gaussian",
                                         target_modules=c.target_modules))
        if c.train_text_encoder:
            self.text_encoder.add_adapter(LoraConfig(r=c.rank, lora_alpha=c.alpha, init_lora_weights="gaussian",
                                                     target_modules=TE_TARGETS))
        if self.precision != "no":
            from diffusers.training_utils import cast_training_params

            cast_training_params(self.trainable_models(), dtype=__import__("torch").float32)
        if c.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if c.train_text_encoder:
                self.text_encoder.gradient_checkpointing_enable()

    def trainable_models(self):
        return [self.unet, self.text_encoder] if self.config.train_text_encoder else [self.unet]

    # ---- phase 3 ----------------------------------------------------------------------------------
    def build_caches(self):
        c = self.config
        self.status.write("caching", images=len(self.examples),
                          text_cache=not c.train_text_encoder,
                          note=None if not c.train_text_encoder else
                          "text-encoder LoRA is on: text embeddings are recomputed every step")
        self.latents = self._latents(self.examples, "instance")
        self.texts = [ex.text for ex in self.examples]
        self.text_emb, self.text_ids = self._texts(self.texts, "instance")
        if c.prior_preservation:
            paths = self._class_images()
            cls_examples = [tdata.Example(p, c.class_prompt) for p in paths]
            self.class_latents = self._latents(cls_examples, "class")
            self.class_emb, self.class_ids = self._texts([c.class_prompt] * len(paths), "class")

    def _cache_dir(self):
        return self.out / "cache" if self.config.cache == "disk" else None

    def _latents(self, examples, kind):
        c = self.config
        key = kind + "-latents-" + tdata.cache_key(examples, base_model=c.base_model, resolution=c.resolution,
                                                    center_crop=c.center_crop, flip=c.random_flip)
        tensors = tdata.load_or_encode(self._cache_dir(), key, lambda: tdata.encode_latents(
            self.vae, [e.path for e in examples], resolution=c.resolution, center_crop=c.center_crop,
            flip=c.random_flip, device=self.device, dtype=self.vae.dtype).tensors())
        t = {k: v.to(self.device) for k, v in tensors.items()}
        return tdata.LatentCache(t["mean"], t["std"], t.get("flipped_mean"), t.get("flipped_std"))

    def _texts(self, texts, kind):
        import hashlib

        ids = tdata.tokenize(self.tokenizer, texts).to(self.device)
        if self.config.train_text_encoder:
            return None, ids
        key = kind + "-text-" + hashlib.sha256(json.dumps([self.config.base_model, texts]).encode()).hexdigest()[:16]
        tensors = tdata.load_or_encode(self._cache_dir(), key, lambda: {"emb": tdata.encode_texts(
            self.text_encoder, self.tokenizer, texts, device=self.device, dtype=self.weight_dtype)})
        return tensors["emb"].to(self.device, self.weight_dtype), ids

    def _class_images(self) -> list[Path]:
        """Class images for prior preservation; the missing ones are generated with the base model."""
        import torch

        c = self.config
        folder = Path(c.class_dir)
        have = tdata.read_class_images(folder)
        if len(have) >= c.num_class_images:
            return have[: c.num_class_images]
        folder.mkdir(parents=True, exist_ok=True)
        pipe = self._pipeline(lora=False)
        need = c.num_class_images - len(have)
        self.status.write("class_images", have=len(have), generating=need)
        for i in range(need):
            g = torch.Generator(self.device).manual_seed(c.seed + 10_000 + i)
            image = pipe(c.class_prompt, num_inference_steps=c.validation_inference_steps, generator=g,
                         height=c.resolution, width=c.resolution, guidance_scale=6.0).images[0]
            tmp = folder / f".class-{len(have) + i:05d}.png"
            image.save(tmp)
            tmp.replace(folder / f"class-{len(have) + i:05d}.png")
        return tdata.read_class_images(folder)[: c.num_class_images]

    # ---- phase 4 ----------------------------------------------------------------------------------
    def prepare(self, resume: str | None):
        import torch
        from diffusers.optimization import get_scheduler

        c, acc = self.config, self.accelerator
        self.total_steps = c.total_steps(len(self.examples), acc.num_processes)
        params = [{"params": [p for p in self.unet.parameters() if p.requires_grad], "lr": c.learning_rate}]
        if c.train_text_encoder:
            params.append({"params": [p for p in self.text_encoder.parameters() if p.requires_grad],
                           "lr": c.text_encoder_lr or c.learning_rate})
        self.params = [p for group in params for p in group["params"]]
        # One fused/multi-tensor update for all LoRA tensors, not one small kernel per tensor.
        fast = {"fused": True} if self.device.type == "cuda" else {"foreach": True}
        self.optimizer = torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=c.weight_decay, **fast)
        self.lr_scheduler = get_scheduler(
            c.lr_scheduler, optimizer=self.optimizer,
            num_warmup_steps=c.lr_warmup_steps * acc.num_processes,
            num_training_steps=self.total_steps * acc.num_processes,
        )
        models = acc.prepare(*self.trainable_models())
        models = models if isinstance(models, (list, tuple)) else [models]
        self.unet = models[0]
        if c.train_text_encoder:
            self.text_encoder = models[1]
        self.optimizer, self.lr_scheduler = acc.prepare(self.optimizer, self.lr_scheduler)
        generator = torch.Generator(self.device).manual_seed(c.seed * 7919 + acc.process_index)
        self.state = TrainState(generator)
        acc.register_for_checkpointing(self.state)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)
        self._perms: dict[int, object] = {}
        if resume:
            ckpt = find_checkpoint(self.out, resume)
            if ckpt is None:
                self.status.write("resume", checkpoint=None, note="no checkpoint yet: starting from step 0")
            else:
                acc.load_state(str(ckpt))
                self.status.write("resume", checkpoint=ckpt.name, step=self.state.step)

    def _save_hook(self, models, weights, output_dir):
        """Checkpoints carry only the LoRA weights (MBs), not the frozen models (GBs)."""
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        if self.accelerator.is_main_process:
            state = {}
            for name, model in zip(("unet", "text_encoder"), self.trainable_models()):
                lora = get_peft_model_state_dict(self.accelerator.unwrap_model(model))
                state.update({f"{name}.{k}": v.detach().float().cpu().contiguous() for k, v in lora.items()})
            save_file(state, str(Path(output_dir) / LORA_STATE))
        while weights:
            weights.pop()

    def _load_hook(self, models, input_dir):
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = load_file(str(Path(input_dir) / LORA_STATE))
        for name, model in zip(("unet", "text_encoder"), self.trainable_models()):
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            result = set_peft_model_state_dict(self.accelerator.unwrap_model(model), part)
            if getattr(result, "unexpected_keys", None):
                raise InvalidInput(f"Checkpoint {input_dir} does not match these LoRA settings.")
        while models:
            models.pop()

    # ---- phase 5 ----------------------------------------------------------------------------------
    def batch_indices(self, micro: int, n: int):
        """Indices of micro-batch ``micro`` on this process: a fixed function of the seed."""
        import torch

        acc, bs = self.accelerator, self.config.batch_size
        start = (micro * acc.num_processes + acc.process_index) * bs
        out = []
        for pos in range(start, start + bs):
            epoch, within = divmod(pos, n)
            if self._perms.get(n, (None,))[0] != epoch:  # one current epoch per set (instance, class)
                g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch + 7 * n)
                self._perms[n] = (epoch, torch.randperm(n, generator=g))
            out.append(int(self._perms[n][1][within]))
        return torch.tensor(out, device=self.device)

    def micro_step(self):
        import torch
        import torch.nn.functional as F

        c, gen = self.config, self.state.generator
        idx = self.batch_indices(self.state.micro, len(self.examples))
        latents, emb = self._inputs(self.latents, self.text_emb, self.text_ids, idx)
        if c.prior_preservation:
            cidx = self.batch_indices(self.state.micro, len(self.class_ids))
            cl, ce = self._inputs(self.class_latents, self.class_emb, self.class_ids, cidx)
            latents, emb = torch.cat([latents, cl]), torch.cat([emb, ce])
        noise = torch.randn(latents.shape, generator=gen, device=self.device, dtype=latents.dtype)
        if c.noise_offset:
            b, ch = latents.shape[:2]
            noise = noise + c.noise_offset * torch.randn((b, ch, 1, 1), generator=gen, device=self.device,
                                                         dtype=latents.dtype)
        sched = self.noise_scheduler
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen,
                                  device=self.device).long()
        noisy = sched.add_noise(latents, noise, timesteps)
        if sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        pred = self.unet(noisy, timesteps, emb, return_dict=False)[0]
        if c.prior_preservation:
            pred, pred_prior = pred.chunk(2)
            target, target_prior = target.chunk(2)
            timesteps = timesteps.chunk(2)[0]
            prior_loss = F.mse_loss(pred_prior.float(), target_prior.float())
        loss = self._loss(pred, target, timesteps)
        if c.prior_preservation:
            loss = loss + c.prior_loss_weight * prior_loss
        return loss

    def _inputs(self, cache, emb_cache, ids, idx):
        import torch

        gen = self.state.generator
        if self.config.random_flip:
            flip = torch.rand(idx.shape[0], generator=gen, device=self.device) < 0.5
        else:
            flip = torch.zeros(idx.shape[0], dtype=torch.bool, device=self.device)
        latents = cache.sample(idx, flip, gen).to(self.weight_dtype)
        emb = emb_cache[idx] if emb_cache is not None else self.text_encoder(ids[idx], return_dict=False)[0]
        return latents, emb.to(self.weight_dtype)

    def _loss(self, pred, target, timesteps):
        import torch
        import torch.nn.functional as F

        gamma = self.config.snr_gamma
        if not gamma:
            return F.mse_loss(pred.float(), target.float())
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, timesteps)
        weights = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            weights = weights / (snr + 1)
        else:
            weights = weights / snr
        loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (loss * weights).mean()

    def loop(self) -> RunResult:
        import torch

        c, acc = self.config, self.accelerator
        result = RunResult("done", self.state.step, self.total_steps)
        self.status.write("start", step=self.state.step, total_steps=self.total_steps, examples=len(self.examples),
                          precision=self.precision, device=str(self.device), processes=acc.num_processes)
        for model in self.trainable_models():
            model.train()
        recent: list[float] = []
        last = time.perf_counter()
        while self.state.step < self.total_steps:
            total = 0.0
            for _ in range(c.grad_accum):
                with acc.accumulate(*self.trainable_models()):
                    loss = self.micro_step()
                    acc.backward(loss)
                    if acc.sync_gradients and c.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.params, c.max_grad_norm)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.state.micro += 1
                    total += loss.detach()
            self.state.step += 1
            step_loss = float(acc.gather(total.reshape(1) / c.grad_accum).mean())
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"The loss became {step_loss} at step {self.state.step}: lower the "
                                         "learning rate (or use bf16 instead of fp16).")
            now = time.perf_counter()
            recent = (recent + [now - last])[-20:]
            last = now
            sec = sum(recent[1:] or recent) / len(recent[1:] or recent)
            remaining = self.total_steps - self.state.step
            self.status.write("step", step=self.state.step, total_steps=self.total_steps, loss=step_loss,
                              lr=self.lr_scheduler.get_last_lr()[0], step_s=round(recent[-1], 5),
                              it_s=round(1 / sec, 3) if sec > 0 else None, eta_s=round(remaining * sec, 1))
            result.losses.append(step_loss)
            if acc.trackers:
                acc.log({"loss": step_loss, "lr": self.lr_scheduler.get_last_lr()[0]}, step=self.state.step)
            finished = self.state.step >= self.total_steps
            if c.validation_steps and self.state.step % c.validation_steps == 0 and not finished:
                self.validate()
            if c.checkpoint_steps and self.state.step % c.checkpoint_steps == 0 and not finished:
                self.checkpoint()
            if not finished and self._stop_requested():
                if not (c.checkpoint_steps and self.state.step % c.checkpoint_steps == 0):
                    self.checkpoint()
                self.status.write("cancelled", step=self.state.step, total_steps=self.total_steps)
                result.status, result.step = "cancelled", self.state.step
                return result
            last = time.perf_counter()  # validation/checkpoint time is not step time
        result.step = self.state.step
        return result

    def _stop_requested(self) -> bool:
        import torch

        flag = bool(self.should_stop())
        if self.accelerator.num_processes > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=self.device)
            flag = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        return flag

    def checkpoint(self):
        acc = self.accelerator
        folder = self.out / "checkpoints"
        final = folder / f"checkpoint-{self.state.step}"
        tmp = folder / f".tmp-checkpoint-{self.state.step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for _, old in list_checkpoints(self.out)[: -self.config.checkpoints_keep]:
                shutil.rmtree(old, ignore_errors=True)
            self.status.write("checkpoint", step=self.state.step, path=str(final.relative_to(self.out)))

    def _pipeline(self, lora: bool = True):
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        unet = self.accelerator.unwrap_model(self.unet) if lora else self.unet
        te = self.accelerator.unwrap_model(self.text_encoder) if lora else self.text_encoder
        scheduler = DPMSolverMultistepScheduler.from_config(self.noise_scheduler.config, use_karras_sigmas=True)
        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=te, tokenizer=self.tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validate(self, final: bool = False):
        """Images of the fixed validation prompts and seeds, saved under samples/."""
        import torch

        acc, c = self.accelerator, self.config
        if not acc.is_main_process:
            return
        for model in self.trainable_models():
            model.eval()
        pipe = self._pipeline()
        samples = self.out / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        names = []
        autocast = torch.autocast(self.device.type, dtype=self.weight_dtype) if self.precision != "no" else _null()
        with torch.no_grad(), autocast:
            for i, (prompt, seed) in enumerate(zip(c.prompts(), c.validation_seeds)):
                g = torch.Generator(self.device).manual_seed(int(seed))
                image = pipe(prompt, num_inference_steps=c.validation_inference_steps, generator=g,
                             height=c.resolution, width=c.resolution, guidance_scale=6.0).images[0]
                name = f"step-{self.state.step:06d}-{i}.png"
                image.save(samples / name)
                names.append(f"samples/{name}")
        for model in self.trainable_models():
            model.train()
        self.status.write("validation", step=self.state.step, images=names, prompts=c.prompts(), final=final)

    # ---- phase 6 ----------------------------------------------------------------------------------
    def export(self, result: RunResult) -> RunResult:
        acc, c = self.accelerator, self.config
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return result
        self.validate(final=True)
        unet = acc.unwrap_model(self.unet)
        te = acc.unwrap_model(self.text_encoder) if c.train_text_encoder else None
        diffusers_file = export.save_diffusers(self.out, unet, te)
        meta = export.kohya_metadata(config=c, base_model=c.base_model, dataset_hash=tdata.dataset_hash(self.examples),
                                     num_images=len(self.examples), steps=self.total_steps,
                                     started_at=self.started_at, finished_at=time.time())
        kohya_file = export.save_kohya(self.out / f"{c.run_name}.safetensors", unet, te, metadata=meta)
        result.files = {"diffusers": diffusers_file.name, "kohya": kohya_file.name}
        if c.push_to_hub:
            result.files["hub"] = self.push(diffusers_file, kohya_file)
        self.status.write("done", step=result.step, total_steps=self.total_steps, files=result.files,
                          dataset_hash=meta["ss_dataset_hash"], examples=len(self.examples),
                          final_loss=result.losses[-1] if result.losses else None)
        return result

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

    # ---- all phases --------------------------------------------------------------------------------
    def run(self, resume: str | None = None) -> RunResult:
        self.check_inputs()
        self.setup()
        self.load_models()
        self.add_adapters()
        self.build_caches()
        self.prepare(resume)
        result = self.loop()
        if result.status == "done":
            result = self.export(result)
        self.accelerator.end_training()
        return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _has_tensorboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def train(config: TrainConfig, *, resume: str | None = None, should_stop=None) -> RunResult:
    """Train one LoRA; see the module docstring. Raises DreamShotError for bad input."""
    return Trainer(config, should_stop=should_stop).run(resume)


# ---- errors, as the tab and the log show them -----------------------------------------------------
def classify_error(exc: BaseException, step: int | None = None) -> tuple[str, str]:
    """(kind, message for the user) of an exception that ended a run."""
    import errno

    import torch

    from dreamshot.errors import DreamShotError

    at = f" at step {step}" if step else ""
    if isinstance(exc, DreamShotError):
        return "input", str(exc)
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None), MemoryError) if t)
    if isinstance(exc, oom_types) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return "oom", (f"Out of memory{at}. Lower --batch-size or --resolution, turn on "
                       "--gradient-checkpointing, or use mixed precision; then resume from the last checkpoint.")
    if isinstance(exc, OSError) and (exc.errno == errno.ENOSPC or "No space left" in str(exc)):
        return "disk_full", (f"The disk is full{at}: free space in the data folder, then resume. "
                             "No unfinished LoRA was presented as finished; checkpoints already saved are kept.")
    if isinstance(exc, FloatingPointError):
        return "diverged", str(exc)
    return "internal", f"Training failed{at}: {exc.__class__.__name__}: {exc}"
