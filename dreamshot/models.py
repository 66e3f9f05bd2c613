"""Base-model loading, in one place, shared by every tab of a process.

``--model`` may be a Hub id (default SD 1.5), a local diffusers folder, or ``demo``. The choice
(``choose``) is cheap and made before the page is built: it decides the banner. The demo model is
built when first needed (``resolve``) and the weights load lazily on first use, once per process,
in the precision of ``--dtype`` (``device_and_dtype``: ``auto`` = fp16 on CUDA, float32 elsewhere; every
model of the studio takes its dtype from there: ``dreamshot.precision``). In fp16 the VAE stays in
float32 (``precision.upcast_vae``).
When the configured model cannot be had (bad path, offline with no cache), the studio falls back to
the built-in demo model and says why.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from dreamshot.demo_model import ensure_demo_model, is_demo_model
from dreamshot.errors import ModelLoadError
from dreamshot.precision import device_and_dtype, dtype_name, precision_text, upcast_vae  # noqa: F401 (re-exported)
from dreamshot.safety import quiet_libraries
from dreamshot.settings import DEFAULT_MODEL, DEMO_MODEL, Settings

log = logging.getLogger(__name__)

# The machine-learning libraries are imported lazily (importing the app loads no model), but a
# half-finished import seen from a second thread fails ("cannot import name 'CLIPTokenizer'"): the
# first import runs under one process-wide lock, and code that needs them calls import_libraries().
_IMPORT_LOCK = threading.Lock()
_IMPORTED = threading.Event()


def import_libraries() -> None:
    """Import torch, transformers and diffusers completely, once per process, one thread at a time;
    a caller arriving while another thread imports them waits until they are whole."""
    if _IMPORTED.is_set():
        return
    with _IMPORT_LOCK:
        if _IMPORTED.is_set():
            return
        import torch  # noqa: F401
        import transformers
        import diffusers

        # The lazy modules resolve their attributes on first access: resolve the ones we use now.
        for name in ("CLIPTokenizer", "CLIPTextModel", "CLIPTextConfig"):
            getattr(transformers, name)
        for name in ("StableDiffusionPipeline", "UNet2DConditionModel", "AutoencoderKL"):
            getattr(diffusers, name)
        _IMPORTED.set()


def import_tokenizer_library() -> None:
    """Import transformers' CLIPTokenizer only (no torch, no diffusers: counting tokens loads no
    model), under the same lock as ``import_libraries`` so threads never import transformers at once."""
    if _IMPORTED.is_set():
        return
    with _IMPORT_LOCK:
        import transformers

        getattr(transformers, "CLIPTokenizer")


def wait_for_imports() -> None:
    """Block while another thread is importing the libraries (cheap otherwise)."""
    if not _IMPORTED.is_set() and _IMPORT_LOCK.locked():
        with _IMPORT_LOCK:
            pass

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
SD1_CROSS_ATTENTION_DIM = 768


@dataclass(frozen=True)
class ModelStatus:
    requested: str            # what --model said
    source: str               # local folder or Hub id actually used
    is_demo: bool
    reason: str | None = None  # why we fell back to the demo model, if we did

    def banner_markdown(self) -> str | None:
        """The warning every page shows while images come from the untrained demo model."""
        if not self.is_demo:
            return None
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"**Demo model: images come from an untrained model with random weights**{why}. "
            f"They are noise, not cinema shots. To use Stable Diffusion 1.5, start the studio with "
            f"`--model {DEFAULT_MODEL}` (needs Hub access once, or a cached copy) or "
            f"`--model /path/to/a/diffusers/folder`, or set `DREAMSHOT_MODEL`."
        )


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks every model load to use the local cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_reachable(timeout: float = 3.0) -> bool:
    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_unavailable(*, probe_hub=None) -> str | None:
    """Why a model that is neither a folder here nor in the local Hub cache cannot be downloaded now
    ("HF_HUB_OFFLINE is set", "the Hub … cannot be reached"), or None when it can. Loaders ask this
    before ``from_pretrained``, which would otherwise spend a minute or more on retries without a
    network; the probe takes 3 s at most."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    if (probe_hub or _hub_reachable)():
        return None
    return f"the Hub ({os.environ.get('HF_ENDPOINT') or 'https://huggingface.co'}) cannot be reached from this machine"


def hub_snapshot(repo_id: str, marker: str = "model_index.json") -> str | None:
    """The cached snapshot folder of repo_id if ``marker`` (a file the model has) is in the local Hub
    cache; None otherwise, and for a malformed id."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, marker)
    except Exception:  # malformed id and the like
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def local_or_cached(source: str, marker: str) -> str | None:
    """A folder holding ``source``: the path itself, or its snapshot in the local Hub cache."""
    local = Path(source).expanduser()
    if local.exists():
        return str(local)
    return hub_snapshot(source, marker) if HUB_ID.match(source) else None


def check_sd1_folder(path: Path) -> None:
    """Raise ModelLoadError unless path holds a Stable Diffusion 1.x diffusers pipeline."""
    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{path} is not a diffusers model folder (no model_index.json).")
    try:
        info = json.loads(index.read_text())
        unet = json.loads((path / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        raise ModelLoadError(f"{path}: model_index.json or unet/config.json is missing or unreadable.") from None
    if info.get("_class_name") != "StableDiffusionPipeline" or unet.get("in_channels") != 4:
        raise ModelLoadError(f"{path} is a {info.get('_class_name')}, not a Stable Diffusion 1.x pipeline.")
    if not is_demo_model(path) and unet.get("cross_attention_dim") != SD1_CROSS_ATTENTION_DIM:
        raise ModelLoadError(
            f"{path} has cross_attention_dim {unet.get('cross_attention_dim')}: not SD 1.x "
            "(SD 2.x uses 1024, SDXL is a different pipeline)."
        )


def choose(settings: Settings, *, probe_hub=_hub_reachable) -> ModelStatus:
    """Decide which model the studio uses without building or loading anything: only files are looked
    at and, for a Hub id missing from the local cache, the Hub is probed (3 s at most). Cheap enough
    to run before the page is built, so the demo-model banner is part of the first paint. Never raises
    for a bad --model: the demo model is chosen instead and ``reason`` says why; its ``source`` stays
    empty until ``resolve`` has built it."""
    spec = settings.model

    def demo(reason: str | None) -> ModelStatus:
        return ModelStatus(spec, "", True, reason)

    if spec == DEMO_MODEL:
        return demo(None)
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if path.exists() or looks_like_path:
        if not path.exists():
            return demo(f"the model folder {spec!r} does not exist")
        if not (path / "model_index.json").is_file():
            return demo(f"{spec!r} is not a diffusers model folder (no model_index.json)")
        return ModelStatus(spec, str(path.resolve()), is_demo_model(path))
    if not HUB_ID.match(spec):
        return demo(f"{spec!r} is neither a local folder nor a Hub id like owner/name")
    if hub_snapshot(spec) or (not hub_offline() and probe_hub()):
        return ModelStatus(spec, spec, False)
    if hub_offline():
        return demo(f"{spec!r} is not in the local Hub cache and HF_HUB_OFFLINE is set")
    return demo(f"{spec!r} is not in the local Hub cache and the Hub cannot be reached")


def resolve(settings: Settings, *, probe_hub=_hub_reachable, chosen: ModelStatus | None = None) -> ModelStatus:
    """``choose`` (or the choice already made), with the built-in demo model built when it is the
    one chosen: the returned ``source`` is always a folder or Hub id to load. Loads no weights."""
    status = chosen or choose(settings, probe_hub=probe_hub)
    if status.source:
        return status
    if status.reason:
        log.warning("Using the built-in demo model: %s", status.reason)
    return replace(status, source=str(ensure_demo_model(settings.models_dir)))


class ModelManager:
    """Loads the base pipeline once per process and hands the same object to every feature."""

    def __init__(self, settings: Settings, status: ModelStatus):
        self.settings = settings
        self.status = status
        self._pipe = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def device_and_dtype(self):
        """The device and dtype every model of this studio loads in (``--dtype``)."""
        return device_and_dtype(self.settings.dtype)

    def precision_text(self) -> str:
        """The precision in use (the loaded UNet's dtype and device), or the setting before loading."""
        unet = getattr(self._pipe, "unet", None)
        return precision_text(self.settings.dtype, (unet.device, unet.dtype) if unet is not None else None)

    def pipeline(self):
        """The shared StableDiffusionPipeline (loaded on first call). Callers that change its
        adapters or scheduler must hold ``generation_lock`` of their own service."""
        if self._pipe is None:
            with self._lock:
                if self._pipe is None:
                    self._pipe = self._load()
        return self._pipe

    def _load(self):
        try:
            return load_pipeline(self.status.source, self.settings.dtype)
        except ModelLoadError as exc:
            if self.status.is_demo:
                raise
            log.warning("Falling back to the demo model: %s", exc)
            self.status = ModelStatus(
                self.status.requested, str(ensure_demo_model(self.settings.models_dir)), True, str(exc)
            )
            return load_pipeline(self.status.source, self.settings.dtype)


def load_pipeline(source: str, dtype_setting: str = "auto"):
    """StableDiffusionPipeline.from_pretrained for a Hub id or a local folder, on the best device, in
    the ``--dtype`` precision (in fp16 the VAE in float32: ``upcast_vae``)."""
    import_libraries()
    import torch
    from diffusers import StableDiffusionPipeline

    device, dtype = device_and_dtype(dtype_setting)
    # fp16: the VAE is read in float32 straight from its file (see upcast_vae), the rest in fp16
    weights = {"default": dtype, "vae": torch.float32} if dtype == torch.float16 else dtype
    kwargs = dict(dtype=weights, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    local = Path(source).exists()
    try:
        if dtype == torch.float16 and not local:
            try:
                pipe = StableDiffusionPipeline.from_pretrained(source, variant="fp16", **kwargs)
            except (OSError, ValueError):
                pipe = StableDiffusionPipeline.from_pretrained(source, **kwargs)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(source, local_files_only=local, **kwargs)
    except Exception as exc:  # network, missing files, wrong architecture: all mean "cannot load"
        raise ModelLoadError(f"Cannot load the base model {source!r}: {exc.__class__.__name__}") from exc
    pipe.set_progress_bar_config(disable=True)
    if device.type == "cpu" and dtype != torch.float32:
        log.warning("--dtype %s on the CPU: slow, for checking the GPU's code paths (auto uses float32 here)",
                    dtype_name(dtype))
        with quiet_libraries():   # diffusers' "cannot run on cpu": it can, in torch 2.13
            pipe = pipe.to(device)
    else:
        pipe = pipe.to(device)
    if upcast_vae(pipe.vae, dtype):
        log.info("the VAE runs in float32 (fp16 overflows in SD 1.5's decoder); the rest in float16")
    return pipe
