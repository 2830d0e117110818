"""Rank-local loading: ``load_file(..., shard=(dim, rank, world))`` equals slicing the tensors of
an unsharded ``load_file`` (numpy and torch), and bad shards raise clear errors."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import helpers  # noqa: E402

import hoist  # noqa: E402

TENSORS = [
    ("w.q", "BF16", (48, 96)),
    ("w.o", "F16", (96, 24)),
    ("w.up", "F32", (12, 12, 36)),
    ("norm", "F32", (96,)),
]


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    rng = np.random.default_rng(20)
    p = str(tmp_path_factory.mktemp("shard") / "tp.safetensors")
    helpers.write_safetensors(
        p, [(n, d, s, helpers.random_bytes(rng, d, s)) for n, d, s in TENSORS]
    )
    return p


def _np_slice(a, dim, rank, world):
    return np.split(a, world, axis=dim)[rank]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("dim", [0, 1])
def test_numpy_ranks_equal_slices_of_the_whole(path, dim, world):
    whole = hoist.load_file(path, framework="np")
    only = None if dim == 0 else "w.*"
    for rank in range(world):
        part = hoist.load_file(
            path, framework="np", shard=(dim, rank, world), shard_filter=only
        )
        assert list(part) == list(whole)
        for name, full in whole.items():
            sliced = dim == 0 or name.startswith("w.")
            want = _np_slice(full, dim, rank, world) if sliced else full
            got = part[name]
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert np.ascontiguousarray(want).tobytes() == got.tobytes(), (name, rank)


def test_torch_ranks_equal_chunks_and_string_specs(path):
    torch = pytest.importorskip("torch")

    def same(a, b):
        # Bit patterns, not values: random bytes hold NaNs.
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
            a.contiguous().flatten().view(torch.uint8), b.contiguous().flatten().view(torch.uint8)
        )

    whole = hoist.load_file(path)
    for rank in range(4):
        part = hoist.load_file(path, shard=f"1:{rank}/4", shard_filter=["w.q", "w.o", "w.up"])
        for name, full in whole.items():
            want = full.chunk(4, 1)[rank] if name != "norm" else full
            assert same(part[name], want), name
        rows = hoist.load_file(path, shard=(0, rank, 4))
        for name, full in whole.items():
            assert same(rows[name], full.chunk(4, 0)[rank]), name


def test_gguf_quantized_rows_and_block_columns(tmp_path):
    # Q8_0: 32 elements in 34 bytes; 4 rows of 4 blocks.
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 4 * 4 * 34, dtype=np.uint8).tobytes()
    p = str(tmp_path / "q.gguf")
    helpers.write_gguf(p, [("blk.0.ffn_up.weight", 8, (4, 128), data)], {})
    full = hoist.load_file(p, framework="np")["blk.0.ffn_up.weight"]
    assert full.shape == (4, 136)  # (rows, bytes per row)
    for rank in range(2):
        rows = hoist.load_file(p, framework="np", shard=(0, rank, 2))["blk.0.ffn_up.weight"]
        assert rows.tobytes() == full[rank * 2:(rank + 1) * 2].tobytes()
        cols = hoist.load_file(p, framework="np", shard=(1, rank, 2))["blk.0.ffn_up.weight"]
        assert cols.tobytes() == full[:, rank * 68:(rank + 1) * 68].tobytes()
    with pytest.raises(ValueError, match="block boundaries"):
        hoist.load_file(p, framework="np", shard=(1, 0, 8))


def test_bad_shards_raise_clear_errors(path):
    with pytest.raises(ValueError, match="rank 4 is out of range for world 4"):
        hoist.load_file(path, shard=(0, 4, 4))
    with pytest.raises(ValueError, match="world must be at least 1"):
        hoist.load_file(path, shard=(0, 0, 0))
    with pytest.raises(ValueError, match="DIM:RANK/WORLD"):
        hoist.load_file(path, shard="rows")
    with pytest.raises(ValueError, match="shard must be"):
        hoist.load_file(path, shard=(0, 1))
    # A float is refused, not truncated to a rank.
    with pytest.raises(ValueError, match="shard must be"):
        hoist.load_file(path, shard=(0, 1.5, 4))
    with pytest.raises(ValueError, match="'w.q'.*cannot be split evenly"):
        hoist.load_file(path, shard=(0, 0, 5))
    with pytest.raises(ValueError, match="'norm'.*no dimension 1"):
        hoist.load_file(path, shard=(1, 0, 2))
    with pytest.raises(hoist.SelectionError, match="matches no tensor"):
        hoist.load_file(path, shard=(0, 0, 2), shard_filter="nothing.*")
    with pytest.raises(ValueError, match="shard_filter needs shard"):
        hoist.load_file(path, shard_filter="w.*")
    with pytest.raises(hoist.DeviceError):
        # No GPU here, or the not-yet error: a DeviceError either way.
        hoist.load_file(path, device="cuda:0", shard=(0, 0, 2))
