"""The pieces of one training step: the data order, the inputs drawn from the caches, the noised
latents and the (min-SNR weighted) loss.

Every random draw (flips, latent samples, noise, timesteps) comes from the trainer's one generator,
whose state is checkpointed; the data order is a fixed function of the seed and the micro-step, so
a resumed run continues the same loss curve as an uninterrupted one.
"""

from __future__ import annotations


class DataOrder:
    """Indices of each micro-batch: a new seeded permutation per epoch and per set (instance, class)."""

    def __init__(self, seed: int, batch_size: int, num_processes: int = 1, process_index: int = 0, device="cpu"):
        self.seed, self.batch_size = seed, batch_size
        self.num_processes, self.process_index, self.device = num_processes, process_index, device
        self._perms: dict[int, tuple[int, object]] = {}

    def indices(self, micro: int, n: int):
        import torch

        start = (micro * self.num_processes + self.process_index) * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, within = divmod(pos, n)
            if self._perms.get(n, (None,))[0] != epoch:  # one current epoch per set size
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 7 * n)
                self._perms[n] = (epoch, torch.randperm(n, generator=g))
            out.append(int(self._perms[n][1][within]))
        return torch.tensor(out, device=self.device)


def draw_inputs(latent_cache, emb_cache, ids, idx, *, generator, random_flip: bool, text_encoder, dtype):
    """(latents, text embeddings) of examples ``idx``: flips and latent samples drawn from ``generator``;
    embeddings from the cache, or from the (trained) text encoder when there is no cache."""
    import torch

    device = latent_cache.mean.device
    if random_flip:
        flip = torch.rand(idx.shape[0], generator=generator, device=device) < 0.5
    else:
        flip = torch.zeros(idx.shape[0], dtype=torch.bool, device=device)
    latents = latent_cache.sample(idx, flip, generator).to(dtype)
    emb = emb_cache[idx] if emb_cache is not None else text_encoder(ids[idx], return_dict=False)[0]
    return latents, emb.to(dtype)


def noised(latents, scheduler, *, generator, noise_offset: float):
    """(noisy latents, timesteps, target) for the scheduler's prediction type."""
    import torch

    device = latents.device
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    if noise_offset:
        b, ch = latents.shape[:2]
        noise = noise + noise_offset * torch.randn((b, ch, 1, 1), generator=generator, device=device,
                                                   dtype=latents.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator,
                              device=device).long()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        return noisy, timesteps, scheduler.get_velocity(latents, noise, timesteps)
    return noisy, timesteps, noise


def loss(pred, target, timesteps, scheduler, snr_gamma: float):
    """MSE, or min-SNR-gamma weighted MSE (Hang et al. 2023) when ``snr_gamma`` > 0."""
    import torch
    import torch.nn.functional as F

    if not snr_gamma:
        return F.mse_loss(pred.float(), target.float())
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weights = torch.stack([snr, snr_gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    weights = weights / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else weights / snr
    per_example = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_example * weights).mean()
