"""Light stand-ins for the application state that AUTOMATIC1111's and sd-webui-controlnet's modules
import, so that ``interop_check.py`` can run *their* loaders and parsers outside their web UI. Nothing
here is peer code: it only decides which of their files load for real and gives the rest empty modules.

Loaded for real (A1111 v1.10.1): ``modules/infotext_utils.py``, ``infotext_versions.py``,
``prompt_parser.py``, ``hashes.py``, ``sd_samplers.py``, ``sd_samplers_kdiffusion.py``,
``sd_samplers_timesteps.py``, ``sd_samplers_common.py``, ``sd_schedulers.py``, ``textual_inversion/textual_inversion.py`` and the
built-in Lora extension's ``networks.py``, ``network.py``, ``network_*.py``, ``lyco_helpers.py``,
``lora_logger.py``. Every other ``modules.*`` module, ``gradio``, ``k_diffusion``, ``torchvision`` and
``diskcache`` is a stand-in whose attributes are inert (``shared`` gets the options these functions
read, with A1111's defaults).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

REAL_A1111 = {"modules", "modules.infotext_utils", "modules.infotext_versions", "modules.prompt_parser",
              "modules.hashes", "modules.sd_samplers", "modules.sd_samplers_kdiffusion",
              "modules.sd_samplers_timesteps", "modules.sd_schedulers", "modules.sd_samplers_common", "modules.textual_inversion",
              "modules.textual_inversion.textual_inversion", "modules.models", "modules.models.sd3"}
STUB_ROOTS = ("modules", "gradio", "k_diffusion", "torchvision", "diskcache", "fastapi", "ldm", "sgm")


class Inert(type):
    """A class whose every attribute is another inert class and whose calls return one: enough for
    import-time decorators, base classes and default arguments of the modules left out."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Inert(name, (), {})

    def __call__(cls, *args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]          # used as a decorator
        return Inert(cls.__name__, (), {})

    def __iter__(cls):
        return iter(())

    def __bool__(cls):
        return False

    def __or__(cls, other):
        return cls


class StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = Inert(name, (), {})
        setattr(self, name, value)
        return value


class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, real: set, roots: tuple, search: list):
        self.real, self.roots, self.search = real, roots, search

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] not in self.roots or fullname in sys.modules:
            return None
        if fullname in self.real:
            return importlib.machinery.PathFinder.find_spec(fullname, path or self.search)
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        module = StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        if module.__name__ == "modules.models.sd3.mmdit":
            module.QkvLinear = type("QkvLinear", (), {})   # an isinstance() target no layer matches


def options(**extra):
    """A1111's option values these functions read (its defaults, shared_options.py)."""
    base = dict(infotext_skip_pasting=[], infotext_styles="Ignore", auto_backcompat=True, hide_samplers=[],
                lora_preferred_name="Alias from file", lora_add_hashes_to_infotext=True, lora_in_memory_limit=0,
                lora_not_found_warning_console=False, lora_not_found_gradio_warning=False,
                lora_bundled_ti_to_infotext=True, lora_functional=False, sd_lora="None",
                textual_inversion_add_hashes_to_infotext=True, use_old_karras_scheduler_sigmas=False, data={})
    base.update(extra)
    return Options(**base)


class Options(types.SimpleNamespace):
    """Any option not listed is off (False), as the backward-compatibility options default."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return False


def install_a1111(root: Path, lora_dir: Path, sd_model=None):
    """Make ``import modules.X`` and the Lora extension's modules importable from ``root`` (A1111's
    checkout) with the stand-ins above; returns the ``modules.shared`` stand-in."""
    sys.meta_path.insert(0, Finder(REAL_A1111, STUB_ROOTS, [str(root)]))
    sys.path[:0] = [str(root), str(root / "extensions-builtin" / "Lora")]
    import modules.shared as shared

    shared.opts = options()
    shared.cmd_opts = types.SimpleNamespace(lora_dir=str(lora_dir), lyco_dir_backcompat=str(lora_dir / "LyCORIS"),
                                            no_hashing=False, embeddings_dir=None)
    shared.sd_model = sd_model
    shared.walk_files = lambda folder, allowed_extensions=None: (
        str(p) for p in sorted(Path(folder).rglob("*")) if allowed_extensions is None or p.suffix in allowed_extensions)
    shared.prompt_styles = None
    import modules.cache as cache

    store: dict = {}
    cache.cache = lambda name: store.setdefault(name, {})
    cache.dump_cache = lambda: None
    cache.cached_data_for_file = lambda subsection, title, filename, func: func()
    import modules.devices as devices

    import torch

    devices.device, devices.cpu, devices.dtype = torch.device("cpu"), torch.device("cpu"), torch.float32
    devices.torch_gc = lambda: None
    import modules.sd_models as sd_models

    def read_state_dict(filename, *args, **kwargs):
        from safetensors.torch import load_file

        return load_file(filename)

    def read_metadata(filename):
        from safetensors import safe_open

        with safe_open(filename, "pt") as fh:
            return dict(fh.metadata() or {})

    sd_models.read_state_dict, sd_models.read_metadata_from_safetensors = read_state_dict, read_metadata
    return shared


def install_controlnet(root: Path):
    """sd-webui-controlnet's modules from ``root`` with pydantic's bundled v1 API (the extension pins
    pydantic<=1.10.17), the web UI's ``modules`` and the optional libraries below as stand-ins."""
    import pydantic.v1 as pydantic_v1

    sys.modules["pydantic"] = pydantic_v1
    sys.meta_path.insert(0, Finder(set(), STUB_ROOTS + CONTROLNET_OPTIONAL, []))
    sys.path.insert(0, str(root))


# Libraries the extension's preprocessors import at module level and only use when they run: the
# unit parser needs the preprocessors registered, not run.
CONTROLNET_OPTIONAL = ("skimage", "mediapipe", "fvcore", "matplotlib", "timm", "onnxruntime", "addict",
                       "yapf", "svglib", "basicsr", "facexlib", "insightface", "omegaconf", "controlnet_aux")


def install_comfy(root: Path):
    """ComfyUI's ``comfy`` package from ``root`` on the CPU. ``torchvision`` (imported at module level
    by model families the check never builds, e.g. comfy/ldm/cosmos) is a stand-in: it breaks
    transformers here (README, Why no torchvision)."""
    if not any(isinstance(f, Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, Finder(set(), ("torchvision",), []))
    sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True


def install_kohya(root: Path):
    """kohya sd-scripts' ``networks`` and ``library`` from ``root``; ``torchvision`` (imported by
    library/utils.py for image transforms the LoRA loader never calls) is a stand-in."""
    if not any(isinstance(f, Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, Finder(set(), ("torchvision",), []))
    sys.path.insert(0, str(root))
