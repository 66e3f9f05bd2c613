"""Batched generation: each batch image is the image of its seed made alone (up to floating-point
noise), a batch rerun is bit-identical, lists of requests keep their order, base-vs-LoRA pairs
share seeds, and the per-call work (scheduler, library, hashes, PNGs) is not repeated."""

from __future__ import annotations

import numpy as np
import pytest

from dreamshot.errors import InvalidInput
from dreamshot.generate import batch as batching
from dreamshot.generate.service import Job, service
from tests.generate_fixtures import fast, gen_studio, lora_files, pixels, one_torch_thread  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Batched kernels may round differently in the last bits: on the tiny model batch and one-by-one
# images differ by at most 1 of 255 in a pixel (measured); a wrong seed differs by > 200.
TOLERANCE = 2


def max_diff(a, b) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


@pytest.mark.parametrize("sampler", ["DPM++ SDE Karras", "Euler a", "DPM++ 2M SDE Karras"])
def test_batch_images_match_one_by_one_and_rerun_is_identical(gen_studio, sampler):
    svc = service(gen_studio)
    req = fast(shot="close", sampler=sampler, seed=100, num_images=3)
    batch = svc.generate(req, save=False)
    assert batch.seeds == [100, 101, 102]
    for image in batch.images:
        alone = svc.generate(req.replace(seed=image.seed, num_images=1), save=False)
        assert max_diff(image.image, alone) <= TOLERANCE, f"seed {image.seed}"
    assert max_diff(batch.images[0].image, batch.images[1].image) > 50      # seeds make different images
    again = svc.generate(req, save=False)
    assert all(np.array_equal(pixels(a.image), pixels(b.image)) for a, b in zip(batch.images, again.images))


def test_generate_many_batches_requests_in_order(gen_studio):
    svc = service(gen_studio)
    requests = [fast("a lighthouse", shot="close", seed=5), fast("a keeper", shot="close", seed=9, num_images=2),
                fast("a boat", seed=3), fast("a gull", shot="close", seed=1)]
    seen = []
    job = Job(progress=lambda f, text: seen.append(text))
    results = svc.generate_many(requests, job, batch_size=2, save=False)
    assert [r.request.prompt for r in results] == ["a lighthouse", "a keeper", "a boat", "a gull"]
    assert [r.seeds for r in results] == [[5], [9, 10], [3], [1]]
    assert results[0].prompt == "a high-quality close shot picture of a lighthouse" and results[2].loras == []
    for req, result in zip(requests, results):
        for image in result.images:
            alone = svc.generate(req.replace(seed=image.seed, num_images=1), save=False)
            assert max_diff(image.image, alone) <= TOLERANCE
    # close group: 4 images in batches of 2, then the base group
    assert any(t.startswith("close α=1 · images 1-2/5: step") for t in seen)
    assert any(t.startswith("close α=1 · images 3-4/5: step") for t in seen)
    assert any(t.startswith("base model · image 5/5: step") for t in seen)


def test_compare_many_pairs_base_and_lora_of_the_same_seed(gen_studio):
    svc = service(gen_studio)
    pairs = svc.compare_many([fast("a bridge", shot="close", seed=21), fast("a tower", shot="medium", seed=-1)],
                             save=False)
    assert len(pairs) == 2
    for base, lora in pairs:
        assert base.seeds == lora.seeds and base.prompt == lora.prompt and base.loras == []
        assert lora.loras and max_diff(base.images[0].image, lora.images[0].image) > 0
    plain = svc.generate(fast(pairs[0][0].prompt, use_template=False, seed=21), save=False)
    assert max_diff(pairs[0][0].images[0].image, plain) <= TOLERANCE
    with pytest.raises(InvalidInput, match="Choose a shot LoRA"):
        svc.compare_many([fast("x", shot="close"), fast("y")])


def test_batch_size_is_automatic_or_checked(gen_studio):
    svc = service(gen_studio)
    assert svc.batch_size_for(fast()) == batching.CPU_BATCH
    with pytest.raises(InvalidInput, match="Batch size must be between 1 and"):
        svc.generate_many([fast()], batch_size=0)
    sizes = []
    real = batching.run_batch

    def counting(pipe, scheduler, items, job, on_step, control=None):
        sizes.append(len(items))
        return real(pipe, scheduler, items, job, on_step, control)

    batching.run_batch = counting
    try:
        svc.generate(fast(num_images=6), save=False)
        svc.generate(fast(num_images=3), save=False, batch_size=1)
    finally:
        batching.run_batch = real
    assert sizes == [4, 2, 1, 1, 1]


def test_progress_counts_the_users_steps(gen_studio):
    """DPM++ SDE makes 2*steps-1 model calls; the progress shows the steps that were asked for."""
    svc = service(gen_studio)
    texts = []
    svc.generate(fast(steps=16, sampler="DPM++ SDE Karras"), Job(progress=lambda f, t: texts.append(t)), save=False)
    numbers = [int(t.rsplit("step ", 1)[1].split("/")[0]) for t in texts]
    assert all(t.endswith("/16") for t in texts) and numbers[0] == 1 and numbers[-1] == 16
    assert numbers == sorted(numbers) and set(numbers) == set(range(1, 17))


def test_per_call_work_is_done_once(gen_studio, monkeypatch):
    from dreamshot.generate import loras as loras_module
    from dreamshot.generate import service as service_module

    svc = service(gen_studio)
    svc.generate(fast(shot="close"), save=False)
    scheduler = svc.scheduler("DPM++ SDE Karras", [1])
    reads, hashes = [], []
    real_list, real_hash = loras_module.LoraLibrary.list, service_module.a1111_lora_hash
    monkeypatch.setattr(loras_module.LoraLibrary, "list", lambda self, kind=None: reads.append(1) or real_list(self, kind))
    monkeypatch.setattr(service_module, "a1111_lora_hash", lambda path: hashes.append(path) or real_hash(path))
    results = svc.generate_many([fast(f"prompt {i}", shot="close", seed=i) for i in range(5)])
    assert len(reads) == 1 and hashes == []               # library read once per call; hash cached
    assert svc.scheduler("DPM++ SDE Karras", [1]) is scheduler   # scheduler built once per sampler
    for result in results:                                 # PNGs were written (in the background)
        path = result.images[0].path
        assert path.is_file() and path.read_bytes() == result.images[0].png()
    twins = svc.generate_many([fast(seed=3), fast(seed=3)])  # the same seed twice: two files
    assert twins[0].images[0].path != twins[1].images[0].path


def test_cancel_inside_a_batch_keeps_the_finished_batches(gen_studio):
    svc = service(gen_studio)
    job = Job()
    job.progress = lambda f, text: job.cancel() if text.startswith("images 3-4/") else None
    [result] = svc.generate_many([fast(steps=2, num_images=4)], job, batch_size=2, save=False)
    assert result.cancelled and result.seeds == [7, 8]


def test_compiled_mode_is_opt_in_and_keeps_the_images(gen_studio):
    svc = service(gen_studio)
    before = svc.generate(fast(shot="close"), save=False)
    assert not svc.compiled
    seconds = svc.compile(fast(shot="close"), backend="eager")   # the plumbing; inductor on a GPU
    assert svc.compiled and seconds > 0
    after = svc.generate(fast(shot="close"), save=False)
    assert max_diff(before.images[0].image, after) <= TOLERANCE
