"""A demo model pre-trained on a toy distribution, for the learning test (issue 11).

The demo model's random weights cannot show learning: its VAE is no autoencoder (decoding a frame's
own latent is no closer to the frame than decoding a random one) and its random UNet cannot denoise,
so no LoRA on its attention layers can bring generations nearer to any frame. Here the same demo
model is first fitted the way a real base model was: the VAE as an autoencoder on toy images, then
the whole UNet (the studio's own full fine-tune, ``--method full``) on toy pictures of coloured
blocks. Frames of one shot type then teach a LoRA something measurable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def close_up_frames(folder: Path, n: int, seed: int, caption: str = "a person by a window") -> Path:
    """``n`` 64-px 'close-ups': one large bright face-like oval filling the frame on a dark ground,
    jittered; an imagefolder with metadata.jsonl (shot close)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            im = Image.new("RGB", (64, 64), (10, 10, 30))
            cx, cy = 32 + rng.integers(-4, 5), 30 + rng.integers(-4, 5)
            ImageDraw.Draw(im).ellipse([cx - 22, cy - 24, cx + 22, cy + 24], fill=(230, 190, 150))
            im.save(folder / f"f{i}.png")
            fh.write(json.dumps({"file_name": f"f{i}.png", "caption": caption, "shot": "close"}) + "\n")
    return folder


def toy_pictures(folder: Path, n: int = 48, seed: int = 1) -> Path:
    """Pictures of coloured blocks on coloured grounds (the toy 'pre-training' distribution)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            im = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 255, 3)))
            draw = ImageDraw.Draw(im)
            for _ in range(3):
                x, y, w = rng.integers(0, 64, 3)
                draw.rectangle([x, y, x + w // 2, y + w // 2], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            im.save(folder / f"p{i}.png")
            fh.write(json.dumps({"file_name": f"p{i}.png", "caption": "a picture", "shot": "close"}) + "\n")
    return folder


def _pixels(paths):
    import torch

    return torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 127.5 - 1)
                        .permute(2, 0, 1) for p in paths])


def fit_vae(model_dir: Path, images: list[Path], steps: int, seed: int = 0) -> None:
    """Train the model's VAE as an autoencoder on ``images`` (in place)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(model_dir / "vae")
    data = _pixels(images)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for _ in range(steps):   # random 32-px crops: the VAE is convolutional, and 4x cheaper to fit so
        top, left = (int(v) for v in torch.randint(0, 33, (2,)))
        x = data[torch.randint(0, len(data), (8,)), :, top:top + 32, left:left + 32]
        post = vae.encode(x).latent_dist
        loss = torch.nn.functional.mse_loss(vae.decode(post.sample()).sample, x) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.save_pretrained(model_dir / "vae")


def pretrained_demo_model(demo_dir: Path, out: Path, work: Path, *, vae_steps: int, unet_steps: int) -> Path:
    """A copy of the demo model whose VAE is an autoencoder and whose UNet denoises toy pictures
    (trained with the studio's full fine-tune and its UNet delta applied)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from training import config as tconfig
    from training.trainer import train

    shutil.copytree(demo_dir, out)
    toys = toy_pictures(work / "toys")
    frames = close_up_frames(work / "vae-frames", 8, seed=99)
    fit_vae(out, sorted(toys.glob("*.png")) + sorted(frames.glob("*.png")), vae_steps)
    run = work / "pretrain"
    train(tconfig.preset("smoke", shot="close", dataset=str(toys), base_model=str(out), output_dir=str(run),
                         method="full", resolution=64, max_steps=unet_steps, learning_rate=1e-3, batch_size=8,
                         random_flip=False, validation_steps=0, checkpoint_steps=0, extract_rank=2))
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    state = unet.state_dict()
    for key, delta in load_file(str(run / "unet_delta.safetensors")).items():
        state[key] = state[key] + delta
    unet.load_state_dict(state)
    shutil.rmtree(out / "unet")
    unet.save_pretrained(out / "unet")
    return out
