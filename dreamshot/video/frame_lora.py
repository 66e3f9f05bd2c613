"""LoRAs on the AnimateDiff UNet with a weight *per frame*: the mechanism behind transitions.

Shot LoRAs and camera-move (motion) LoRAs are loaded into the motion UNet as named peft adapters with
diffusers' own loader (``load_lora_adapter``: diffusers, kohya and peft formats, network alphas), UNet
part only. A constant weight is peft's adapter weight. A per-frame weight vector ``w[f]`` is a forward
hook on each of the adapter's ``lora_B`` layers that multiplies the LoRA branch output sample by
sample before peft adds it to the base output - so frame f sees ``W0 + w[f]·scale·B·A``.

Batch layout (AnimateDiff's UNetMotionModel): spatial layers see ``[cfg batch × frames]`` samples in
batch-major order (index = b·F + f; with CFG b=0 is the unconditional half), so ``w`` is tiled over
the CFG batch; temporal (motion-module) layers see ``[b·H·W, F, C]``, so ``w`` runs along dim 1.
"""

from __future__ import annotations

from contextlib import contextmanager

from dreamshot.errors import ModelLoadError


class FrameLoras:
    """The adapters of one motion UNet. Not thread-safe: callers hold the generation lock."""

    def __init__(self, unet):
        self.unet = unet
        self.loaded: dict[str, str] = {}     # adapter name -> where it came from

    def load(self, name: str, source, *, label: str) -> None:
        """Load a LoRA (a state dict, a file, a folder or a Hub id) once as adapter ``name``."""
        if name in self.loaded:
            return
        from diffusers import AnimateDiffPipeline

        try:
            state, alphas = AnimateDiffPipeline.lora_state_dict(source)
        except Exception as exc:
            raise ModelLoadError(f"Cannot read the LoRA {label}: {exc.__class__.__name__}: {exc}") from None
        unet_part = {k: v for k, v in state.items() if k.startswith("unet.")}
        if not unet_part:
            raise ModelLoadError(f"The LoRA {label} has no UNet weights.")
        unet_alphas = {k: v for k, v in (alphas or {}).items() if k.startswith("unet.")} or None
        from dreamshot.video.clip import quiet

        try:
            with quiet():
                self.unet.load_lora_adapter(unet_part, prefix="unet", network_alphas=unet_alphas, adapter_name=name)
        except Exception as exc:
            raise ModelLoadError(f"The LoRA {label} does not fit this base model "
                                 f"({exc.__class__.__name__}: {exc})") from None
        if not any(name in getattr(m, "lora_B", {}) for m in self.unet.modules()):
            raise ModelLoadError(f"The LoRA {label} matched no layer of this base model.")
        self.loaded[name] = label

    @contextmanager
    def active(self, weights: dict, frames: int):
        """Use ``{adapter: weight}`` for the duration; a weight is a number or a list of ``frames``
        numbers. Adapters not named are off."""
        import torch

        names = list(weights)
        if not names:
            if self.loaded:
                self.unet.disable_lora()
            try:
                yield
            finally:
                if self.loaded:
                    self.unet.enable_lora()
            return
        vectors = {n: w for n, w in weights.items() if isinstance(w, (list, tuple))}
        for name, vector in vectors.items():
            if len(vector) != frames:
                raise ValueError(f"{name}: {len(vector)} weights for {frames} frames")
        self.unet.enable_lora()
        self.unet.set_adapters(names, [1.0 if n in vectors else float(w) for n, w in weights.items()])
        param = next(self.unet.parameters())
        tensors = {n: torch.tensor(v, dtype=param.dtype, device=param.device) for n, v in vectors.items()}
        hooks = []
        try:
            for module_name, module in self.unet.named_modules():
                lora_b = getattr(module, "lora_B", None)
                if lora_b is None:
                    continue
                temporal = "motion_modules" in module_name
                for name, vec in tensors.items():
                    if name in lora_b:
                        hooks.append(lora_b[name].register_forward_hook(_scale_hook(vec, frames, temporal)))
            yield
        finally:
            for hook in hooks:
                hook.remove()


def _scale_hook(vec, frames: int, temporal: bool):
    def hook(module, inputs, output):
        if temporal:
            if output.ndim < 2 or output.shape[1] != frames:
                raise RuntimeError(f"per-frame LoRA: temporal layer output {tuple(output.shape)} has no frame axis")
            return output * vec.view(1, frames, *([1] * (output.ndim - 2)))
        if output.shape[0] % frames:
            raise RuntimeError(f"per-frame LoRA: batch {output.shape[0]} is not a multiple of {frames} frames")
        per_sample = vec.repeat(output.shape[0] // frames)
        return output * per_sample.view(-1, *([1] * (output.ndim - 1)))
    return hook


@contextmanager
def per_frame_text(unet, cond_a, cond_b, t: list):
    """Blend two prompts' embeddings frame by frame: frame f is conditioned on
    ``(1 - t[f])·cond_a + t[f]·cond_b`` (each [1, tokens, dim]). A forward pre-hook on the motion UNet
    replaces the conditional rows of ``encoder_hidden_states`` ([cfg batch × frames, ...], the
    conditional block last, as AnimateDiffPipeline lays it out); the unconditional rows stay."""
    import torch

    frames = len(t)
    w = torch.tensor(t, dtype=cond_a.dtype, device=cond_a.device).view(-1, 1, 1)
    blended = (1 - w) * cond_a + w * cond_b            # [frames, tokens, dim]

    def hook(module, args, kwargs):
        states = kwargs.get("encoder_hidden_states")
        if states is None or states.shape[0] % frames or states.shape[1:] != blended.shape[1:]:
            raise RuntimeError("per-frame prompt: unexpected encoder_hidden_states layout")
        states = states.clone()
        states[-frames:] = blended.to(states.dtype)
        return args, {**kwargs, "encoder_hidden_states": states}

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
