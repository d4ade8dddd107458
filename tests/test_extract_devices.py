"""Several local GPUs: concurrent embedding jobs each lock a different device."""

import pytest

from mimprobe.devices import claim_gpu


def test_jobs_take_different_gpus_most_free_memory_first(tmp_path):
    free = {0: 10, 1: 40, 2: 30}.__getitem__
    first, lock_a = claim_gpu(3, tmp_path, free_memory=free)
    second, lock_b = claim_gpu(3, tmp_path, free_memory=free)
    third, lock_c = claim_gpu(3, tmp_path, free_memory=free)
    assert (first, second, third) == (1, 2, 0)
    with pytest.raises(TimeoutError, match="all 3 GPUs"):
        claim_gpu(3, tmp_path, free_memory=free, poll_seconds=0.01, timeout_seconds=0.02)
    lock_b.close()  # a finished (or killed) job releases its device
    assert claim_gpu(3, tmp_path, free_memory=free)[0] == 2
    assert (tmp_path / "gpu1.lock").read_text().startswith("pid ")
    lock_a.close(), lock_c.close()
