"""LoRA uploads are checked with `safetensors` before diffusers sees them: pickles are never
loaded, LoRAs for another architecture get a clear message, and the service keeps working."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from dreamshot.errors import InvalidInput
from dreamshot.generate.service import service
from dreamshot.generate.loras import LoraLibrary, ModelShapes, inspect_lora_file
from tests.generate_fixtures import fast, gen_studio, lora_files, one_torch_thread  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Boom:
    """Unpickling this writes a marker file: proof that a pickle was executed."""
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def pickle_bomb(path, marker):
    Boom.marker = marker
    with open(path, "wb") as fh:
        pickle.dump(Boom(), fh)
    return path


@pytest.fixture
def shapes(studio):
    return ModelShapes.of_pipeline(studio.models.pipeline())


def test_formats_are_detected(shapes, lora_files):
    diffusers = inspect_lora_file(lora_files["close"], shapes)
    kohya = inspect_lora_file(lora_files["close_kohya"], shapes)
    assert (diffusers.format, kohya.format) == ("diffusers", "kohya")
    assert diffusers.rank == kohya.rank == 4 and diffusers.components == ("unet",)


def test_pickles_are_refused_unopened(shapes, tmp_path):
    marker = tmp_path / "executed"
    for name in ("lora.ckpt", "lora.pt", "lora.bin"):
        with pytest.raises(InvalidInput, match="pickle"):
            inspect_lora_file(pickle_bomb(tmp_path / name, marker), shapes)
    disguised = pickle_bomb(tmp_path / "disguised.safetensors", marker)
    with pytest.raises(InvalidInput, match="not a valid safetensors file"):
        inspect_lora_file(disguised, shapes)
    assert not marker.exists()
    with pytest.raises(InvalidInput, match="only .safetensors"):
        inspect_lora_file(tmp_path / "x.txt", shapes)


def test_other_architectures_get_a_clear_message(shapes, lora_files, tmp_path):
    state = load_file(str(lora_files["close"]))
    sdxl = {k: (torch.zeros(v.shape[0], 2048) if "attn2.to_k.lora.down" in k or "attn2.to_v.lora.down" in k else v)
            for k, v in state.items()}
    save_file(sdxl, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(InvalidInput, match="made for SDXL"):
        inspect_lora_file(tmp_path / "sdxl.safetensors", shapes)
    wrong = {k: (torch.zeros(v.shape[0], 999) if k.endswith("attn1.to_q.lora.down.weight") else v) for k, v in state.items()}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(InvalidInput, match="wrong shape"):
        inspect_lora_file(tmp_path / "wrong.safetensors", shapes)
    save_file({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 320)},
              str(tmp_path / "ldm.safetensors"))
    with pytest.raises(InvalidInput, match="match no layer"):
        inspect_lora_file(tmp_path / "ldm.safetensors", shapes)
    save_file({"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 1280)},
              str(tmp_path / "xl_te.safetensors"))
    with pytest.raises(InvalidInput, match="SDXL"):
        inspect_lora_file(tmp_path / "xl_te.safetensors", shapes)
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, str(tmp_path / "loha.safetensors"))
    with pytest.raises(InvalidInput, match="LyCORIS"):
        inspect_lora_file(tmp_path / "loha.safetensors", shapes)


def test_upload_stores_registers_and_generates(studio, lora_files, tmp_path):
    svc = service(studio)
    info = svc.upload_lora(lora_files["close_kohya"], name="noir", shot="close")
    assert info.origin == "uploaded" and info.format == "kohya"
    assert info.path.is_relative_to(studio.settings.loras_dir) and info.path.is_file()
    assert svc.generate(fast(shot="close")).loras[0][0].name == "noir"
    with pytest.raises(InvalidInput, match="already in the library"):
        svc.upload_lora(lora_files["close"], name="noir", shot="close")
    assert LoraLibrary(studio).get("noir").format == "kohya"


def test_refused_upload_leaves_nothing_and_the_service_keeps_working(studio, lora_files, tmp_path):
    svc = service(studio)
    marker = tmp_path / "executed"
    bad = [pickle_bomb(tmp_path / "a.ckpt", marker), pickle_bomb(tmp_path / "b.safetensors", marker)]
    for path in bad:
        with pytest.raises(InvalidInput):
            svc.upload_lora(path, name="bad", shot=None)
    with pytest.raises(InvalidInput, match="LoRA name"):
        svc.upload_lora(lora_files["close"], name="../etc", shot=None)
    with pytest.raises(InvalidInput, match="Unknown shot type"):
        svc.upload_lora(lora_files["close"], name="ok", shot="dolly")
    assert not marker.exists() and LoraLibrary(studio).list() == []
    assert not (studio.settings.loras_dir / "uploads").exists() or not any((studio.settings.loras_dir / "uploads").iterdir())
    assert svc.generate(fast()).images


@pytest.mark.postgres
def test_upload_and_generate_on_postgresql(make_studio, pg_url, lora_files):
    studio = make_studio(db_url=pg_url)
    svc = service(studio)
    info = svc.upload_lora(lora_files["close"], name="pg_close", shot="close")
    assert [i.name for i in LoraLibrary(studio).list()] == ["pg_close"] and info.format == "diffusers"
    assert svc.generate(fast(shot="close")).loras[0][0].name == "pg_close"


def test_a1111_lora_hash_skips_the_header(lora_files):
    import hashlib
    import struct

    from dreamshot.generate.loras import a1111_lora_hash, file_sha256

    data = lora_files["close"].read_bytes()
    (header,) = struct.unpack("<Q", data[:8])
    expected = hashlib.sha256(data[8 + header:]).hexdigest()[:12]
    assert a1111_lora_hash(lora_files["close"]) == expected != file_sha256(lora_files["close"])[:12]
