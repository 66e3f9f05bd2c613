"""LoRAs as named adapters of the shared pipeline, switched in milliseconds and run at base speed.

Each LoRA file is loaded once with ``pipe.load_lora_weights(state_dict, adapter_name=...)`` (the
state dict read with ``safetensors`` after ``loras.inspect_lora_file`` accepted it: never a pickle).
Then a *mix* - ((adapter, weight), ...), e.g. (("close", 0.8),) or a blend - is applied by:

1. restoring the original weights of every LoRA-wrapped layer from a saved copy (bit for bit, so
   no floating-point drift accumulates and α = 0 is exactly the base model);
2. setting each adapter's weight (peft ``set_scale``: what ``pipe.set_adapters`` does per layer);
3. merging the weighted adapters into the weights, as ``pipe.fuse_lora`` does: for plain Linear
   LoRA layers one ``addmm`` per adapter writes ``W0 + scale * B @ A`` from the saved original
   (one pass over the weights); other layers (conv, LoRA bias) use peft's own ``merge``;
4. putting each peft layer's base layer in its place, so generation runs the plain model's code.

This works on a cached list of the LoRA layers: the pipeline-level ``set_adapters`` /
``fuse_lora`` / ``unfuse_lora`` walk every module of the UNet several times, which alone costs
more than the 20 ms budget for an α change on SD 1.5. ``cross_attention
_kwargs={"scale": ...}`` is never used (it silently resets adapter weights, see STACK-NOTES).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from dreamshot.errors import DreamShotError, ModelLoadError
from dreamshot.safety import quiet_libraries
from dreamshot.generate.loras import LoraInfo, ModelShapes, inspect_lora_file, store_upload

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    parent: object     # module holding the layer
    name: str          # attribute name in parent
    layer: object      # peft LoraLayer (wrapper)
    weight: object     # copy of the original base weight
    bias: object       # copy of the original bias (peft may merge a LoRA bias) or None
    dirty: bool = False  # the live weights differ from the copy


class AdapterBank:
    """The adapters of one pipeline. Not thread-safe: callers hold their service's lock."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.loaded: dict[str, str] = {}   # adapter name -> sha256 of the file it came from
        self.mix: tuple = ()               # the mix merged into the weights now
        self._slots: list[_Slot] = []
        self._detached = False             # base layers are in the wrappers' places

    # ---- loading ------------------------------------------------------------------------------
    def load(self, name: str, state_dict: dict, sha256: str) -> float:
        """Load one adapter (once); returns seconds. ModelLoadError if diffusers refuses it."""
        if name in self.loaded:
            return 0.0
        t0 = time.perf_counter()
        self._attach()          # diffusers must see the wrappers, or it would wrap them again
        self._restore_weights()
        self.mix = ()
        try:
            with quiet_diffusers():
                self.pipe.load_lora_weights(state_dict, adapter_name=name)
        except Exception as exc:
            self._delete(name)
            self._collect()
            log.warning("adapter %s refused by diffusers: %s: %.2000s", name, exc.__class__.__name__, exc)
            raise ModelLoadError("cannot be loaded into this base model") from exc
        self.loaded[name] = sha256
        self._collect()
        self.apply(())
        return time.perf_counter() - t0

    def _delete(self, name: str) -> None:
        try:
            listed = self.pipe.get_list_adapters()
            if any(name in names for names in listed.values()):
                self.pipe.delete_adapters(name)
        except Exception:
            log.warning("could not remove the half-loaded adapter %s", name, exc_info=True)

    def _collect(self) -> None:
        """Find every peft LoRA layer (with its parent) and keep a copy of its original weights."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        known = {id(s.layer): s for s in self._slots}
        slots = []
        for component in ("unet", "text_encoder"):
            model = getattr(self.pipe, component, None)
            if model is None:
                continue
            for parent in model.modules():
                for child_name, child in parent.named_children():
                    if not isinstance(child, BaseTunerLayer):
                        continue
                    slot = known.get(id(child))
                    if slot is None:  # new layer: its weights are the original ones right now
                        base = child.get_base_layer()
                        bias = getattr(base, "bias", None)
                        slot = _Slot(parent, child_name, child, base.weight.detach().clone(),
                                     bias.detach().clone() if bias is not None else None)
                    slots.append(slot)
        self._slots = slots

    # ---- switching ----------------------------------------------------------------------------
    def apply(self, mix) -> float:
        """Make ``mix`` ((adapter, weight), ...) the merged LoRA mix; zero weights are dropped.
        Returns the seconds it took (0 when the mix is already in place)."""
        import torch

        mix = tuple((a, float(w)) for a, w in mix if float(w) != 0.0)
        unknown = [a for a, _ in mix if a not in self.loaded]
        if unknown:
            raise KeyError(f"adapters not loaded: {unknown}")
        if mix == self.mix and self._detached:
            return 0.0
        t0 = time.perf_counter()
        weights = dict(mix)
        with torch.no_grad():
            for slot in self._slots:
                names = [a for a in weights if a in slot.layer.scaling]
                if not names:
                    self._restore(slot)
                    continue
                for a in names:
                    slot.layer.set_scale(a, weights[a])
                if self._plain_linear(slot, names):
                    # W = W0 + sum(scale * B @ A), one fused addmm per adapter straight from the saved
                    # original: no copy-back, no delta tensor (same result as peft's merge up to rounding).
                    live = slot.layer.get_base_layer().weight.data
                    slot.layer.merged_adapters.clear()
                    source = slot.weight
                    for a in names:
                        torch.addmm(source, slot.layer.lora_B[a].weight, slot.layer.lora_A[a].weight,
                                    alpha=slot.layer.scaling[a], out=live)
                        source = live
                else:  # conv layers, LoRA bias: peft's own merge
                    self._restore(slot)
                    slot.layer.merge(adapter_names=names)
                slot.dirty = True
        self.mix = mix
        self._detach()
        return time.perf_counter() - t0

    @staticmethod
    def _plain_linear(slot: _Slot, names: list) -> bool:
        import torch

        layer = slot.layer
        base = layer.get_base_layer()
        return (isinstance(base, torch.nn.Linear) and not getattr(layer, "fan_in_fan_out", False)
                and not any(a in getattr(layer, "lora_variant", {}) for a in names)
                and not any(getattr(layer, "lora_bias", {}).get(a, False) for a in names)
                and all(layer.lora_B[a].weight.dtype == base.weight.dtype for a in names)
                and not (base.weight.device.type == "cpu" and base.weight.dtype != torch.float32))

    def _restore(self, slot: _Slot) -> None:
        if slot.dirty or slot.layer.merged_adapters:
            base = slot.layer.get_base_layer()
            base.weight.data.copy_(slot.weight)
            if slot.bias is not None:
                base.bias.data.copy_(slot.bias)
            slot.layer.merged_adapters.clear()
            slot.dirty = False

    def _restore_weights(self) -> None:
        import torch

        with torch.no_grad():
            for slot in self._slots:
                self._restore(slot)

    def _detach(self) -> None:
        """Base layers (holding the merged weights) replace the wrappers: plain-model speed."""
        if not self._detached:
            for slot in self._slots:
                setattr(slot.parent, slot.name, slot.layer.get_base_layer())
            self._detached = True

    def _attach(self) -> None:
        if self._detached:
            for slot in self._slots:
                setattr(slot.parent, slot.name, slot.layer)
            self._detached = False


class AdapterSet:
    """The library's LoRAs as adapters of one pipeline: each file checked (``inspect_lora_file``,
    never unpickled) and loaded once, then mixes merged by the ``AdapterBank``. Callers hold their
    service's lock."""

    def __init__(self, pipe, library):
        self.pipe = pipe
        self.library = library
        self.bank = AdapterBank(pipe)
        self._shapes: ModelShapes | None = None

    def shapes(self) -> ModelShapes:
        if self._shapes is None:
            self._shapes = ModelShapes.of_pipeline(self.pipe)
        return self._shapes

    @staticmethod
    def name(info: LoraInfo) -> str:
        return re.sub(r"\W", "_", info.name)[:48] + "_" + info.sha256[:8]

    def ensure_loaded(self, infos: list[LoraInfo]) -> None:
        """Load each LoRA once as a named adapter (validated first; never via pickle)."""
        from safetensors.torch import load_file

        for info in infos:
            name = self.name(info)
            if name in self.bank.loaded:
                continue
            if not info.path.is_file():
                raise ModelLoadError(f"The LoRA file of {info.name!r} is missing ({info.path.name}).")
            inspect_lora_file(info.path, self.shapes())
            try:
                seconds = self.bank.load(name, load_file(str(info.path)), info.sha256)
            except ModelLoadError:
                raise ModelLoadError(f"The LoRA {info.name!r} cannot be loaded into this base model.") from None
            log.info("loaded LoRA %s as adapter %s in %.2fs", info.name, name, seconds)

    def configure(self, mix: list) -> float:
        """Load (once) and merge [(LoraInfo, weight)]; returns the seconds it took."""
        t0 = time.perf_counter()
        self.ensure_loaded([info for info, _ in mix])
        self.bank.apply(tuple((self.name(info), w) for info, w in mix))
        return time.perf_counter() - t0

    def upload(self, path, *, name: str, shot: str | None, base_model: str | None) -> LoraInfo:
        """Validate, store and register an upload, then load it once to prove it works; a refused
        file leaves nothing behind."""
        info = store_upload(self.library, path, name=name, shot=shot, shapes=self.shapes(), base_model=base_model)
        try:
            self.ensure_loaded([info])
            self.bank.apply(())
        except DreamShotError:
            self.library.remove(info.name)
            info.path.unlink(missing_ok=True)
            raise
        return info


def quiet_diffusers():
    """Silence diffusers' 'no text-encoder keys' notice and peft's multiple-adapters warning: both
    are expected when several UNet-only LoRAs are loaded as named adapters."""
    return quiet_libraries(".*multiple adapters.*")
