"""Fixed-bucket batching: an image's bits do not depend on its batch, so recovery is bit-exact alone."""

import numpy as np
import pytest
import torch
from PIL import Image

from faceveil.data.images import elliptical_mask
from faceveil.errors import InputError
from faceveil.keys import SecretKey
from faceveil.models.backbones import load_backbone
from faceveil.models.buckets import bucket_for, run_bucketed
from faceveil.models.pipeline import Anonymizer, Settings, to_tensor

SIZE, STEPS = 64, 4


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def backbone(request, one_thread):
    return load_backbone("tiny", device="cpu", dtype=getattr(torch, request.param))


@pytest.fixture(scope="module")
def faces(face128, face128_b):
    small = [np.asarray(Image.fromarray(f).resize((SIZE, SIZE), Image.Resampling.LANCZOS)) for f in (face128, face128_b)]
    return [small[0], small[1], small[0][::-1].copy(), np.ascontiguousarray(small[1][:, ::-1])]


def test_bucket_choice():
    assert [bucket_for(n, 8) for n in (1, 2, 3, 4, 5, 8, 9, 30)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert bucket_for(7, 6) == 4  # always a power of two
    with pytest.raises(ValueError):
        bucket_for(0, 8)


def test_eps_is_bit_identical_at_any_position_with_any_neighbours(backbone, faces):
    mask = elliptical_mask(SIZE, SIZE)
    x = to_tensor(faces)
    m = torch.from_numpy(np.stack([mask] * 4)[:, None].astype(np.float32))
    with torch.no_grad():
        cond = run_bucketed(backbone.conditioning, 4, x, m)
        z = run_bucketed(backbone.encode, 4, x)

        def eps(order):
            idx = torch.tensor(order)
            return run_bucketed(lambda zz, mm, ll: backbone.eps(zz, 500, {"mask": mm, "masked_latents": ll}),
                                4, z[idx], cond["mask"][idx], cond["masked_latents"][idx])

        ref = eps([0, 1, 2, 3])
        for order in ([3, 2, 1, 0], [2, 0], [0], [1, 3, 0], [3, 0, 0, 1, 2, 1]):
            out = eps(order)
            for pos, i in enumerate(order):
                assert torch.equal(out[pos], ref[i]), (order, pos)
        # The conditioning's encoder call is bucketed too: alone it gives the batch's bits.
        alone = run_bucketed(backbone.conditioning, 4, x[2:3], m[2:3])
        assert torch.equal(alone["masked_latents"][0], cond["masked_latents"][2])


def test_anonymize_in_a_batch_recover_each_alone_bit_exact(backbone, faces):
    key = SecretKey(bytes(range(32)))
    mask = elliptical_mask(SIZE, SIZE)
    nonces = [bytes([i]) * 16 for i in range(4)]
    a = Anonymizer(backbone, Settings("exact", STEPS))
    veiled = a.anonymize(faces, [mask] * 4, key, nonces=nonces, allow_caller_nonces=True)
    assert {v.compute["bucket"] for v in veiled} == {"4"}
    # The same image with other neighbours at another position: the same bits.
    moved = a.anonymize([faces[3], faces[2], faces[0]], [mask] * 3, key, nonces=[nonces[3], nonces[2], nonces[0]], allow_caller_nonces=True)
    assert np.array_equal(moved[2].image, veiled[0].image) and torch.equal(moved[2].state, veiled[0].state)
    for v, face in zip(veiled, faces):
        rec = a.recover([v], key)[0]
        assert np.array_equal(rec.image, face)
    # A bucket-1 file and a bucket-4 file recovered together: each at its own bucket.
    single = a.anonymize(faces[1:2], [mask], key, nonces=[nonces[1]], allow_caller_nonces=True)[0]
    assert single.compute["bucket"] == "1"
    both = a.recover([single, veiled[2]], key)
    assert np.array_equal(both[0].image, faces[1]) and np.array_equal(both[1].image, faces[2])


def test_a_file_cannot_ask_for_a_huge_bucket(backbone, faces):
    key = SecretKey(bytes(32))
    mask = elliptical_mask(SIZE, SIZE)
    a = Anonymizer(backbone, Settings("exact", 2))
    v = a.anonymize(faces[:1], [mask], key)[0]
    v.compute["bucket"] = "1000000"
    with pytest.raises(InputError, match="bucket"):
        a.recover([v], key)


def test_progress_advances_with_each_network_call(backbone, faces):
    key = SecretKey(bytes(32))
    mask = elliptical_mask(SIZE, SIZE)
    seen: list[float] = []
    a = Anonymizer(backbone, Settings("exact", STEPS), on_progress=seen.append)
    veiled = a.anonymize(faces[:3], [mask] * 3, key)
    # One report per network call, in small steps, adding up to the batch (no jump at the end).
    assert len(seen) == a.meter.calls and len(seen) > 3 * STEPS
    assert max(seen) < 0.2 and sum(seen) == pytest.approx(3)
    seen.clear()
    a.recover(veiled, key)
    assert len(seen) > STEPS and sum(seen) == pytest.approx(3)


def test_recovery_runs_with_the_recorded_cpu_thread_count(faces):
    """CPU kernels split their sums by thread count: a file records it and recovery uses it."""
    bb = load_backbone("tiny", device="cpu")
    mask = elliptical_mask(SIZE, SIZE)
    key = SecretKey.generate()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        v = Anonymizer(bb, Settings("exact", STEPS)).anonymize(faces[:2], [mask] * 2, key)
        assert [x.compute["threads"] for x in v] == ["1", "1"]
        torch.set_num_threads(2)
        rec = Anonymizer(bb, Settings("exact", STEPS)).recover(v, key)
        assert torch.get_num_threads() == 2  # restored after recovery
        assert all(np.array_equal(r.image, f) for r, f in zip(rec, faces[:2]))
        v[0].compute["threads"] = "99999"  # untrusted: bounded
        with pytest.raises(InputError, match="thread count"):
            Anonymizer(bb, Settings("exact", STEPS)).recover(v[:1], key)
    finally:
        torch.set_num_threads(before)
