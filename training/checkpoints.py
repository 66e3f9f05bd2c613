"""Resumable checkpoints: ``<run>/checkpoints/checkpoint-<step>/``, written by accelerate's
``save_state`` (optimizer, LR schedule, RNG states, the trainer's counters and generator) plus the
trained weights alone, never the frozen GBs: a LoRA's weights (``lora_state.safetensors``, MBs), a
textual-inversion token's vectors, or a full fine-tune's UNet (``Weights`` says which).

A checkpoint is written under a temporary name and renamed when complete; the last K are kept.
Listing and finding checkpoints needs no torch (the job runner uses them).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from dreamshot.errors import InvalidInput

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
LORA_STATE = "lora_state.safetensors"
PARTS = ("unet", "text_encoder")


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


class Weights:
    """What a checkpoint keeps of the models: ``file`` in the checkpoint folder, ``state()`` -> tensors,
    ``load(tensors, folder)``. This one: the LoRA weights of the trained models (UNet, text encoder)."""
    file = LORA_STATE

    def __init__(self, accelerator, models):
        self.accelerator, self.models = accelerator, models   # models: a callable (they get prepared)

    def state(self) -> dict:
        from peft.utils import get_peft_model_state_dict

        out = {}
        for name, model in zip(PARTS, self.models()):
            lora = get_peft_model_state_dict(self.accelerator.unwrap_model(model))
            out.update({f"{name}.{k}": v.detach().float().cpu().contiguous() for k, v in lora.items()})
        return out

    def load(self, state: dict, folder) -> None:
        from peft.utils import set_peft_model_state_dict

        for name, model in zip(PARTS, self.models()):
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            result = set_peft_model_state_dict(self.accelerator.unwrap_model(model), part)
            if getattr(result, "unexpected_keys", None):
                raise InvalidInput(f"Checkpoint {folder} does not match these LoRA settings.")


def register(accelerator, state: TrainState, weights: Weights) -> None:
    """Make accelerate's save/load_state carry ``state`` and only ``weights`` of the models."""
    accelerator.register_for_checkpointing(state)
    accelerator.register_save_state_pre_hook(lambda _m, w, out: _save(accelerator, weights, w, out))
    accelerator.register_load_state_pre_hook(lambda loaded, folder: _load(weights, loaded, folder))


def _save(accelerator, weights: Weights, models, output_dir) -> None:
    from safetensors.torch import save_file

    if accelerator.is_main_process:
        save_file(weights.state(), str(Path(output_dir) / weights.file))
    models.clear()  # accelerate would save the whole models otherwise


def _load(weights: Weights, loaded, input_dir) -> None:
    from safetensors.torch import load_file

    path = Path(input_dir) / weights.file
    if not path.is_file():
        raise InvalidInput(f"Checkpoint {input_dir} has no {weights.file}: it belongs to another training method.")
    weights.load(load_file(str(path)), input_dir)
    loaded.clear()


def save(accelerator, out: Path, step: int, keep: int, status) -> Path:
    """``out/checkpoints/checkpoint-<step>`` written atomically; older ones beyond ``keep`` removed."""
    folder = out / "checkpoints"
    final = folder / f"checkpoint-{step}"
    tmp = folder / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for _, old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        status.write("checkpoint", step=step, path=str(final.relative_to(out)))
    return final
