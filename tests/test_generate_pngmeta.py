"""A1111 'parameters' text: our own round trip, and real AUTOMATIC1111 strings."""

from __future__ import annotations

import pytest
from PIL import Image

from dreamshot.generate import pngmeta
from dreamshot.errors import InvalidInput
from dreamshot.generate.service import parse_blend, request_from_parameters
from dreamshot.shots import get_taxonomy

A1111_16 = """masterpiece, best quality, 1girl, (smile:1.2) <lora:add_detail:0.5>, looking at viewer
Negative prompt: (worst quality:1.4), EasyNegative
Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.5, Clip skip: 2, Hires upscale: 2, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.6.0"""

A1111_19 = """a photo of a lighthouse
Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 42, Size: 640x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"""


class FakeLora:
    def __init__(self, name):
        self.name = name


def test_round_trip_with_quoting_and_multiline():
    text = pngmeta.format_parameters(
        "a woman, reading\nby the window", "blurry, dark",
        {"Steps": 16, "Sampler": "DPM++ SDE Karras", "CFG scale": 6.0, "Seed": 3, "Size": "512x512",
         "Lora hashes": "close: abc, medium: def", "Caption": "a: b"}, [("close", 0.6), ("medium", 0.4)])
    assert 'Lora hashes: "close: abc, medium: def"' in text
    p = pngmeta.parse_parameters(text)
    assert p.prompt == "a woman, reading\nby the window" and p.negative_prompt == "blurry, dark"
    assert p.loras == [("close", 0.6), ("medium", 0.4)]
    assert p.get_int("Steps") == 16 and p.get_float("CFG scale") == 6.0 and p.size == (512, 512)
    assert p.lora_hashes == {"close": "abc", "medium": "def"} and p.settings["Caption"] == "a: b"


def test_real_a1111_strings():
    old = pngmeta.parse_parameters(A1111_16)
    assert old.prompt.startswith("masterpiece") and "<lora" not in old.prompt and old.loras == [("add_detail", 0.5)]
    assert old.negative_prompt == "(worst quality:1.4), EasyNegative"
    assert old.sampler == "DPM++ 2M Karras" and old.size == (512, 768) and old.get_int("Seed") == 1234567890
    assert old.lora_hashes == {"add_detail": "7c6bad76eb54"} and old.settings["Clip skip"] == "2"
    new = pngmeta.parse_parameters(A1111_19)
    assert new.sampler == "DPM++ 2M Karras" and new.negative_prompt == "" and new.get_float("CFG scale") == 5.5


def test_restore_request_from_a1111_and_notes():
    taxonomy = get_taxonomy("paper")
    req, notes = request_from_parameters(A1111_16, [FakeLora("close")], taxonomy)
    assert (req.steps, req.cfg, req.seed, req.width, req.height) == (20, 7.0, 1234567890, 512, 768)
    assert req.sampler == "DPM++ 2M Karras" and req.shot is None and not req.use_template
    assert any("add_detail" in n for n in notes)
    req, notes = request_from_parameters(A1111_19.replace("DPM++ 2M", "Heun++ 9000"), [], taxonomy)
    assert req.sampler == "DPM++ SDE Karras" and "Heun++ 9000 Karras" in notes[0]
    with pytest.raises(InvalidInput, match="No generation settings"):
        request_from_parameters("", [], taxonomy)


def test_png_and_jpeg_exif_read_back(tmp_path):
    image = Image.new("RGB", (16, 16), "red")
    png = pngmeta.save_png(image, tmp_path / "a.png", A1111_19)
    assert pngmeta.read_parameters(png) == A1111_19
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111_19.encode("utf-16-be")
    image.save(tmp_path / "a.jpg", exif=exif)
    assert pngmeta.read_parameters(tmp_path / "a.jpg") == A1111_19
    image.save(tmp_path / "plain.png")
    assert pngmeta.read_parameters(tmp_path / "plain.png") is None


def test_parse_blend():
    assert parse_blend("close=0.6, medium:0.4") == {"close": 0.6, "medium": 0.4}
    assert parse_blend("  ") is None
    with pytest.raises(InvalidInput, match="name=weight"):
        parse_blend("close 0.6")
