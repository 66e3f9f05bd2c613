"""Full fine-tune (``--method full``, DreamBooth): every UNet weight trains; the result is kept as
the UNet delta and extracted to a LoRA so it rides the α slider and the library like any LoRA.

- The UNet is loaded in fp32 (master weights; ``--mixed-precision`` autocasts the forward pass),
  ``--gradient-checkpointing`` trades compute for memory, ``--optimizer adamw`` is fused on CUDA,
  ``adamw8bit`` is bitsandbytes' 8-bit AdamW. Prior preservation works as for a LoRA.
- Before anything loads, a CUDA device is checked for memory: the UNet's parameter count (from its
  config, on the meta device) x (weights 4 + gradients 4 + AdamW states 8, or 2 in 8 bits) bytes,
  plus activations and the frozen parts (``required_bytes``). Too little: a clear refusal.
- ``--freeze-non-lora`` keeps biases, norms and the layers outside the blocks frozen, so the LoRA
  carries the whole change; off (the default, as kohya) they train and only ``unet_delta`` has them.
- Files: ``unet_delta.safetensors`` (W_tuned - W_base of the tensors that changed, fp32),
  ``<name>.safetensors`` (the extracted kohya LoRA, rank ``--extract-rank``) and ``extraction.json``
  (the relative Frobenius error of each layer, see ``extract.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

from dreamshot.errors import InvalidInput
from training import components, extract
from training.checkpoints import Weights
from training.trainer import Trainer

GIB = 1 << 30
SD15_UNET_PARAMS = 859_520_964
UNET_STATE = "unet_state.safetensors"
DELTA_FILE = "unet_delta.safetensors"
REPORT_FILE = "extraction.json"


def unet_parameters(source: str) -> int:
    """The UNet's parameter count from its config alone (built on the meta device: nothing loads)."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    local = Path(source).exists()
    config = UNet2DConditionModel.load_config(source, subfolder="unet", local_files_only=local)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    return sum(p.numel() for p in unet.parameters())


def required_bytes(params: int, config) -> int:
    """An estimate of a full fine-tune's device memory: fp32 weights and gradients, AdamW's two
    states (8 bytes, or 2 in 8 bits), activations (SD 1.5 at 512 px: ~6 GiB per image, ~1.5 GiB with
    gradient checkpointing; scaled by pixels and by model size) and 1 GiB for the frozen parts and
    the CUDA context; then 10 % margin."""
    adam = 2 if config.optimizer == "adamw8bit" else 8
    per_image = (1.5 if config.gradient_checkpointing else 6.0) * GIB * (config.resolution / 512) ** 2
    activations = per_image * config.batch_size * min(1.0, params / SD15_UNET_PARAMS)
    return int(1.1 * (params * (4 + 4 + adam) + activations + GIB))


def free_memory(device) -> int | None:
    """Free bytes on a CUDA device; None elsewhere (no check on a CPU)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def check_memory(params: int, config, free: int | None) -> None:
    if free is None:
        return
    need = required_bytes(params, config)
    if need > free:
        hints = [h for h, off in (("--gradient-checkpointing", not config.gradient_checkpointing),
                                  ("--optimizer adamw8bit", config.optimizer != "adamw8bit"),
                                  ("a smaller --batch-size", config.batch_size > 1)) if off]
        raise InvalidInput(
            f"A full fine-tune of this UNet ({params / 1e6:.0f} M parameters) needs about {need / GIB:.1f} GiB "
            f"of GPU memory; the GPU has {free / GIB:.1f} GiB free. "
            + (f"Try {', '.join(hints)}, " if hints else "") + "or train a LoRA (--method lora) instead.")


def freeze_non_lora(unet) -> int:
    """Freeze what a LoRA cannot carry; returns how many tensors stay trainable."""
    lora = extract.lora_weight_names(unet)
    for name, param in unet.named_parameters():
        param.requires_grad_(name in lora)
    return sum(p.requires_grad for p in unet.parameters())


class UnetWeights(Weights):
    """A checkpoint keeps the UNet's trained tensors."""
    file = UNET_STATE

    def state(self) -> dict:
        unet = self.accelerator.unwrap_model(self.models()[0])
        return {n: p.detach().float().cpu().contiguous() for n, p in unet.named_parameters() if p.requires_grad}

    def load(self, state: dict, folder) -> None:
        unet = self.accelerator.unwrap_model(self.models()[0])
        trained = {n for n, p in unet.named_parameters() if p.requires_grad}
        if set(state) != trained:
            raise InvalidInput(f"Checkpoint {folder} does not match these settings (--freeze-non-lora, base model).")
        unet.load_state_dict(state, strict=False)


class FullTrainer(Trainer):
    def load_parts(self) -> components.Components:
        check_memory(unet_parameters(self.config.base_model), self.config, free_memory(self.device))
        return components.load(self.config.base_model, self.precision, self.device, fp32=("unet",))

    def make_trainable(self) -> list:
        unet = self.parts.unet
        unet.requires_grad_(True)
        if self.config.freeze_non_lora:
            freeze_non_lora(unet)
        if self.config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        return [unet]

    def checkpoint_weights(self) -> Weights:
        return UnetWeights(self.accelerator, lambda: self.trainable)

    def release_optimizer(self) -> None:
        """Drop AdamW's states and the gradients: the run is over (its last checkpoint holds them)."""
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        optimizer.state.clear()
        for param in self.params:
            param.grad = None
        components.empty_cache()

    def save_result(self, dataset_hash: str) -> tuple[dict[str, Path], dict]:
        import torch
        from diffusers import UNet2DConditionModel

        c = self.config
        self.release_optimizer()   # 8 bytes a parameter, before a second UNet (the base) is loaded
        unet = self.accelerator.unwrap_model(self.unet)
        tuned = {k: v.detach().float() for k, v in unet.state_dict().items()}
        base_unet = UNet2DConditionModel.from_pretrained(c.base_model, subfolder="unet", dtype=torch.float32,
                                                         local_files_only=Path(c.base_model).exists())
        base = base_unet.state_dict()
        meta = self.metadata(dataset_hash)
        delta = extract.save_atomic(extract.delta_state(base, tuned), self.out / DELTA_FILE,
                                    {**meta, "content": "unet weights: tuned - base (changed tensors only)"})
        extraction = extract.extract(base, tuned, extract.lora_weight_names(unet), c.extract_rank)
        del base_unet, base
        summary = extraction.summary()
        lora_meta = {**meta, "ss_network_module": "networks.lora", "ss_network_dim": str(extraction.alpha),
                     "ss_network_alpha": str(extraction.alpha), "ss_network_args": "{}",
                     "dreamshot_extraction": str(summary)}
        lora = extract.save_atomic(extraction.state, self.out / f"{c.run_name}.safetensors", lora_meta)
        report = extract.write_report(extraction, self.out / REPORT_FILE)
        return {"kohya": lora, "delta": delta, "extraction": report}, {"extraction": summary}

    def metadata(self, dataset_hash: str) -> dict[str, str]:
        c = self.config
        return {"ss_base_model_version": "sd_v1", "ss_sd_model_name": c.base_model, "ss_output_name": c.run_name,
                "ss_shot_type": c.shot, "ss_dataset_hash": dataset_hash, "ss_max_train_steps": str(self.total_steps),
                "ss_learning_rate": f"{c.learning_rate:g}", "ss_resolution": f"({c.resolution}, {c.resolution})",
                "ss_num_train_images": str(len(self.examples)), "ss_seed": str(c.seed),
                "ss_training_started_at": f"{self.started_at:.0f}", "ss_training_finished_at": f"{time.time():.0f}",
                "ss_training_comment": f"DreamShot: full UNet fine-tune ({c.shot}), extracted to a LoRA",
                "dreamshot_method": "full", "dreamshot_optimizer": c.optimizer,
                "dreamshot_freeze_non_lora": str(c.freeze_non_lora), "modelspec.sai_model_spec": "1.0.0",
                "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.title": c.run_name}
