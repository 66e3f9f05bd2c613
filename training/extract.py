"""A full fine-tune's UNet as a LoRA: the SVD of each weight difference, as kohya's
``networks/extract_lora_from_models.py`` does.

For every Linear and Conv2d weight of the UNet's down/mid/up blocks (the modules kohya's LoRA and
AUTOMATIC1111 address) the difference ``ΔW = W_tuned - W_base`` is reshaped to a matrix (a conv's
``(out, in, k, k)`` becomes ``(out, in*k*k)``; 1x1 and 3x3 alike), decomposed ``ΔW = U S Vᵀ`` and cut
to rank r: ``up = U_r S_r`` (``(out, r)``, a conv's ``(out, r, 1, 1)``) and ``down = V_rᵀ``
(``(r, in)``, a conv's ``(r, in, k, k)``). The file is kohya's format with one ``alpha`` = the rank
(scale 1; see ``_one_alpha`` for layers smaller than the rank), so ``pipe.load_lora_weights`` reads
it and the α slider scales it like any LoRA.

Unlike kohya we do not clamp the largest 1 % of the factors' values: at full rank the LoRA then
gives back ΔW exactly (to float rounding). What a LoRA cannot carry - biases, norm weights, and the
layers outside the blocks (``conv_in``, ``conv_out``, ``time_embedding``) - is measured and reported
as ``not_in_lora``; ``--freeze-non-lora`` keeps those frozen during the fine-tune so the LoRA holds
the whole change.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from training.export import kohya_key

BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")


@dataclass
class Extraction:
    rank: int
    state: dict                              # kohya keys -> tensors
    errors: dict = field(default_factory=dict)   # module -> ||ΔW - up·down||_F / ||ΔW||_F
    ranks: dict = field(default_factory=dict)    # module -> rank used (≤ rank, ≤ the layer's own)
    not_in_lora: dict = field(default_factory=dict)  # parameter -> ||Δ||_F / ||W_base||_F
    alpha: int = 0                           # the one alpha of every module

    def summary(self) -> dict:
        errs = list(self.errors.values())
        lost = list(self.not_in_lora.values())
        return {"rank": self.rank, "alpha": self.alpha, "layers": len(errs),
                "mean_error": sum(errs) / len(errs) if errs else 0.0, "max_error": max(errs, default=0.0),
                "not_in_lora": len(lost), "not_in_lora_max": max(lost, default=0.0)}

    def report(self) -> dict:
        return {**self.summary(), "per_layer": {k: {"error": self.errors[k], "rank": self.ranks[k]}
                                                for k in self.errors},
                "not_in_lora_per_param": dict(self.not_in_lora)}


def lora_modules(unet) -> dict:
    """name -> module: the Linear/Conv2d layers a kohya LoRA can address (inside the blocks)."""
    import torch

    return {name: m for name, m in unet.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and name.startswith(BLOCKS)}


def lora_weight_names(unet) -> set[str]:
    return {f"{name}.weight" for name in lora_modules(unet)}


def kohya_name(module: str) -> str:
    return kohya_key("unet", module)


def svd_factors(delta, rank: int):
    """(up, down, relative error, rank used) of one weight difference, in float32 (computed in float64)."""
    import torch

    out_ch = delta.shape[0]
    mat = delta.reshape(out_ch, -1).double()
    r = max(1, min(rank, *mat.shape))
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    up, down = u[:, :r] * s[:r], vh[:r]
    norm = torch.linalg.matrix_norm(mat)
    err = float(torch.linalg.matrix_norm(mat - up @ down) / norm) if norm > 0 else 0.0
    if delta.dim() == 4:
        up = up.reshape(out_ch, r, 1, 1)
        down = down.reshape(r, *delta.shape[1:])
    return up.float().contiguous(), down.float().contiguous(), err, r


def extract(base_state: dict, tuned_state: dict, modules: set[str], rank: int) -> Extraction:
    """The LoRA of ``tuned - base`` for ``modules`` (their ``.weight`` names); everything else that
    changed goes to ``not_in_lora``."""
    import torch

    result = Extraction(rank, {})
    for name, tuned in tuned_state.items():
        base = base_state[name].to(tuned.device, torch.float32)
        delta = tuned.float() - base
        if not bool(delta.any()):
            continue
        if name in modules:
            module = name[: -len(".weight")]
            up, down, err, r = svd_factors(delta, rank)
            key = kohya_name(module)
            result.state.update({f"{key}.lora_up.weight": up.cpu(), f"{key}.lora_down.weight": down.cpu()})
            result.errors[module], result.ranks[module] = err, r
        else:
            ref = float(torch.linalg.vector_norm(base)) or 1.0
            result.not_in_lora[name] = float(torch.linalg.vector_norm(delta)) / ref
    _one_alpha(result)
    return result


def _one_alpha(result: Extraction) -> None:
    """One alpha for every module (= the largest rank used): a layer cut to a smaller rank r (its own
    size) gets r / alpha baked into its up weights, so ``alpha / r`` scaling gives back ΔW in every
    loader (diffusers 0.42 ignores per-module alphas that differ from the most common one)."""
    import torch

    alpha = max(result.ranks.values(), default=result.rank)
    for module, r in result.ranks.items():
        key = kohya_name(module)
        if r != alpha:
            result.state[f"{key}.lora_up.weight"] = result.state[f"{key}.lora_up.weight"] * (r / alpha)
        result.state[f"{key}.alpha"] = torch.tensor(float(alpha))
    result.alpha = alpha


def delta_state(base_state: dict, tuned_state: dict) -> dict:
    """``tuned - base`` of the tensors that changed (float32, on the CPU)."""
    out = {}
    for name, tuned in tuned_state.items():
        delta = tuned.detach().float().cpu() - base_state[name].float().cpu()
        if bool(delta.any()):
            out[name] = delta.contiguous()
    return out


def save_atomic(tensors: dict, path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
    os.replace(tmp, path)
    return path


def write_report(extraction: Extraction, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(extraction.report(), indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path
