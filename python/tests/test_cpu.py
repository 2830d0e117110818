"""CPU tests of the hoist Python package: every tensor compared byte-for-byte with
safetensors' own reader (numpy) or with the bytes in the file; needs numpy, safetensors, pytest.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading

import numpy as np
import pytest
from safetensors import safe_open as st_safe_open
from safetensors.numpy import load_file as st_load_file
from safetensors.numpy import save_file as st_save_file

sys.path.insert(0, os.path.dirname(__file__))
import helpers  # noqa: E402

import hoist  # noqa: E402

NP_DTYPES = [
    np.float64, np.float32, np.float16, np.int64, np.uint64, np.int32, np.uint32,
    np.int16, np.uint16, np.int8, np.uint8, np.bool_, np.complex64,
]


def _random(rng, dtype, shape):
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    if dtype == np.complex64:
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    """Same dtype, shape and bytes."""
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def _same_as_reference(got: dict, paths) -> None:
    ref = {}
    for p in paths:
        ref.update(st_load_file(p))
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
        _same(got[k], v)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def single(tmp_path_factory, rng):
    """One file holding every numpy-safetensors dtype, a scalar, zero-size tensors, and one
    tensor larger than a read chunk (16 MiB)."""
    d = tmp_path_factory.mktemp("single")
    t = {}
    for i, dt in enumerate(NP_DTYPES):
        t[f"t.{i}.{np.dtype(dt).name}"] = _random(rng, dt, (3, 5 + i))
    t["scalar.f32"] = np.array(1.5, dtype=np.float32)
    t["scalar.i64"] = np.array(-7, dtype=np.int64)
    t["empty.f16"] = np.zeros((0, 4), dtype=np.float16)
    t["empty.i32"] = np.zeros((4, 0, 2), dtype=np.int32)
    t["big.f32"] = rng.standard_normal((5, 1 << 20)).astype(np.float32)  # 20 MiB
    t["odd.u8"] = _random(rng, np.uint8, (7, 3))  # makes later offsets unaligned
    t["after.f64"] = _random(rng, np.float64, (9,))
    p = str(d / "model.safetensors")
    st_save_file(t, p, metadata={"format": "np", "source": "test"})
    return p


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, rng):
    """A hub-style sharded checkpoint: 3 shards + index."""
    d = tmp_path_factory.mktemp("sharded")
    weight_map = {}
    total = 0
    files = []
    for s in range(3):
        t = {}
        for j in range(4):
            name = f"model.layers.{s * 4 + j}.mlp.weight"
            t[name] = _random(rng, [np.float32, np.float16, np.int8][j % 3], (16, 8 + j))
            total += t[name].nbytes
        if s == 0:
            t["model.embed_tokens.weight"] = _random(rng, np.float32, (64, 16))
        fname = f"model-{s + 1:05d}-of-00003.safetensors"
        st_save_file(t, str(d / fname), metadata={"format": "pt"})
        for k in t:
            weight_map[k] = fname
        files.append(str(d / fname))
    helpers.write_index(str(d), weight_map, total)
    return str(d), files


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("backend", ["auto", "pread", "mmap"])
def test_single_file_every_tensor_matches(single, backend):
    got = hoist.load_file(single, framework="np", backend=backend)
    _same_as_reference(got, [single])



def _cached_share(path: str) -> float:
    """Share of ``path``'s pages in the page cache (mincore over an untouched mapping)."""
    import ctypes
    import mmap

    size = os.path.getsize(path)
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        vec = ctypes.create_string_buffer(pages)
        try:
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(b & 1 for b in vec.raw) / pages


def _evict(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return _cached_share(path) < 0.01


@pytest.mark.parametrize("backend", ["auto", "uring", "pread"])
@pytest.mark.parametrize("cache", ["auto", "keep", "bypass"])
def test_cache_policies_load_the_same_bytes(single, backend, cache):
    _same_as_reference(hoist.load_file(single, framework="np", backend=backend, cache=cache), [single])
    got = dict(hoist.iter_tensors(single, framework="np", backend=backend, cache=cache))
    _same_as_reference(got, [single])
    with hoist.safe_open(single, "np", backend=backend, cache=cache) as f:
        _same(f.get_tensor("big.f32"), st_load_file(single)["big.f32"])


def test_cache_keep_leaves_the_file_cached_and_bypass_does_not(single):
    if not _evict(single):
        pytest.skip("eviction from the page cache does not take on this filesystem (tmpfs?)")
    hoist.load_file(single, framework="np", cache="keep")
    assert _cached_share(single) >= 0.9
    assert _evict(single)
    try:
        os.close(os.open(single, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return  # no O_DIRECT here: bypass reads through the cache too
    hoist.load_file(single, framework="np", cache="bypass")
    # The header is read through the cache; the data (20 MiB of it) is not.
    assert _cached_share(single) <= 0.05

def test_dict_in_file_order(single):
    got = hoist.load_file(single, framework="np")
    with st_safe_open(single, "np") as f:
        order = f.offset_keys() if hasattr(f, "offset_keys") else None
    if order is not None:
        assert list(got) == order


def test_list_of_files(sharded):
    _, files = sharded
    got = hoist.load_file(files, framework="np")
    _same_as_reference(got, files)


def test_sharded_directory_with_index(sharded):
    d, files = sharded
    _same_as_reference(hoist.load_file(d, framework="np"), files)


def test_index_json_path(sharded):
    d, files = sharded
    _same_as_reference(hoist.load_file(os.path.join(d, "model.safetensors.index.json"), framework="np"), files)


def test_directory_without_index(sharded, tmp_path):
    _, files = sharded
    for f in files:
        os.symlink(f, tmp_path / os.path.basename(f))
    _same_as_reference(hoist.load_file(str(tmp_path), framework="np"), files)


def test_pathlike_and_single_item_list(single):
    import pathlib

    a = hoist.load_file(pathlib.Path(single), framework="np")
    b = hoist.load_file([single], framework="np")
    assert list(a) == list(b)


# ----------------------------------------------------------------------------- dtypes


def test_bf16_and_float8_bytes(tmp_path, rng):
    p = str(tmp_path / "low.safetensors")
    tensors = []
    for dt, shape in [("BF16", (4, 6)), ("F8_E4M3", (3, 5)), ("F8_E5M2", (2, 2)), ("BF16", ()), ("F8_E4M3", (0,))]:
        tensors.append((f"{dt}.{len(tensors)}", dt, shape, helpers.random_bytes(rng, dt, shape)))
    helpers.write_safetensors(p, tensors)
    got = hoist.load_file(p, framework="np")
    for name, dt, shape, data in tensors:
        a = got[name]
        assert a.shape == shape
        assert a.tobytes() == data
        if dt == "BF16":
            # uint16 bit patterns, or ml_dtypes.bfloat16 when installed (documented fallback)
            assert a.dtype.itemsize == 2 and a.dtype.name in ("uint16", "bfloat16")
        else:
            assert a.dtype.itemsize == 1 and a.dtype.name in ("uint8", "float8_e4m3fn", "float8_e5m2")


def test_bf16_values_through_bits(tmp_path):
    vals = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)
    bits = (vals.view(np.uint32) >> 16).astype(np.uint16)
    p = str(tmp_path / "bf16.safetensors")
    helpers.write_safetensors(p, [("w", "BF16", (4,), bits.tobytes())])
    a = hoist.load_file(p, framework="np")["w"]
    back = (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    assert np.array_equal(back, vals)


def test_gguf_plain_and_quantized(tmp_path, rng):
    p = str(tmp_path / "m.gguf")
    f32 = rng.standard_normal((3, 64)).astype(np.float32)
    q8 = rng.integers(0, 256, 4 * (128 // 32) * 34, dtype=np.uint8).tobytes()  # 4 rows x 128 elems
    helpers.write_gguf(
        p,
        [("tok.weight", 0, (3, 64), f32.tobytes()), ("blk.0.q.weight", 8, (4, 128), q8)],
        {"general.architecture": "llama", "general.alignment": 32, "llama.context_length": 2048},
    )
    got = hoist.load_file(p, framework="np")
    _same(got["tok.weight"], f32)
    q = got["blk.0.q.weight"]
    assert q.dtype == np.uint8 and q.shape == (4, 4 * 34)
    assert q.tobytes() == q8
    infos = {i.name: i for i in hoist.tensor_infos(p)}
    assert infos["blk.0.q.weight"].dtype == "Q8_0"
    assert infos["blk.0.q.weight"].ggml_type == 8
    assert infos["blk.0.q.weight"].shape == (4, 128)
    with hoist.safe_open(p, framework="np") as f:
        md = f.metadata()
        assert md["general.architecture"] == "llama"
        assert md["llama.context_length"] == 2048
        assert f.tensor_info("blk.0.q.weight").dtype == "Q8_0"


# ----------------------------------------------------------------------------- selection


def test_filter_glob_and_list(sharded):
    d, files = sharded
    ref = {}
    for p in files:
        ref.update(st_load_file(p))
    got = hoist.load_file(d, framework="np", filter="model.layers.1*")
    assert sorted(got) == sorted(k for k in ref if k.startswith("model.layers.1"))
    got = hoist.load_file(d, framework="np", filter=["*.embed_tokens.*", "model.layers.3.*"])
    assert sorted(got) == ["model.embed_tokens.weight", "model.layers.3.mlp.weight"]
    for k, v in got.items():
        _same(v, ref[k])


def test_filter_matching_nothing(sharded):
    d, _ = sharded
    with pytest.raises(hoist.SelectionError, match="nothing.here"):
        hoist.load_file(d, framework="np", filter="nothing.here")


# ----------------------------------------------------------------------------- safe_open


def test_safe_open_parity(single):
    with st_safe_open(single, framework="np") as ref, hoist.safe_open(single, framework="np") as f:
        assert f.keys() == ref.keys()
        if hasattr(ref, "offset_keys"):
            assert f.offset_keys() == ref.offset_keys()
        assert f.metadata() == ref.metadata()
        for k in ref.keys():
            _same(f.get_tensor(k), ref.get_tensor(k))
            s, rs = f.get_slice(k), ref.get_slice(k)
            assert s.get_shape() == rs.get_shape()
            assert s.get_dtype() == rs.get_dtype()
        _same(f.get_slice("big.f32")[1:3, :10], ref.get_slice("big.f32")[1:3, :10])


def test_safe_open_no_metadata_is_none(tmp_path):
    p = str(tmp_path / "nometa.safetensors")
    st_save_file({"x": np.ones(3, np.float32)}, p)
    with st_safe_open(p, "np") as ref, hoist.safe_open(p, "np") as f:
        assert f.metadata() == ref.metadata()


def test_safe_open_each_get_is_its_own_tensor(single):
    with hoist.safe_open(single, framework="np") as f:
        a = f.get_tensor("t.1.float32")
        b = f.get_tensor("t.1.float32")
        assert np.array_equal(a, b)
        a[0, 0] = 12345.0
        assert b[0, 0] != 12345.0


def test_safe_open_missing_key(single):
    with hoist.safe_open(single, framework="np") as f:
        with pytest.raises(hoist.SelectionError, match="no.such"):
            f.get_tensor("no.such")


def test_safe_open_sharded_dir_and_get_tensors(sharded):
    d, files = sharded
    with hoist.safe_open(d, framework="np") as f:
        _same_as_reference({k: f.get_tensor(k) for k in f.keys()}, files)
        _same_as_reference(f.get_tensors(), files)
        md = f.metadata()
        assert md["format"] == "pt"  # the shards' __metadata__
        assert md["total_size"] == 4992  # the index's metadata


# ----------------------------------------------------------------------------- streaming


def test_iter_tensors_yields_each_once(sharded):
    d, files = sharded
    seen = {}
    for name, arr in hoist.iter_tensors(d, framework="np"):
        assert name not in seen
        seen[name] = arr
    _same_as_reference(seen, files)


def test_iter_tensors_filter_and_early_stop(single):
    it = hoist.iter_tensors(single, framework="np", filter="t.*")
    first = next(it)
    assert first[0].startswith("t.")
    del it
    gc.collect()
    names = [n for n, _ in hoist.iter_tensors(single, framework="np", filter="t.*")]
    assert len(names) == len(NP_DTYPES) and len(set(names)) == len(names)


def test_iter_tensors_errors_raise_from_the_call(tmp_path):
    p = str(tmp_path / "x.safetensors")
    with pytest.raises(hoist.HoistIOError, match="x.safetensors"):
        hoist.iter_tensors(p, framework="np")


def test_file_shrunk_after_open(tmp_path):
    """Headers are read at the call, data later: a file cut in between is a CheckpointError
    naming it, raised from get_tensor or from the iteration."""
    p = tmp_path / "shrinks.safetensors"
    st_save_file({"a": np.ones(1 << 20, np.float32), "b": np.ones(4, np.float32)}, str(p))
    size = p.stat().st_size
    f = hoist.safe_open(str(p), framework="np")
    it = hoist.iter_tensors(str(p), framework="np")
    with open(p, "r+b") as fh:
        fh.truncate(size - (2 << 20))
    with pytest.raises(hoist.CheckpointError, match="shrinks.safetensors"):
        f.get_tensor("a")
    with pytest.raises(hoist.CheckpointError, match="shrinks.safetensors"):
        list(it)


# ----------------------------------------------------------------------------- lifetime


def test_arrays_outlive_the_dict(single):
    ref = st_load_file(single)
    got = hoist.load_file(single, framework="np")
    keep = {k: got[k] for k in ("t.1.float32", "scalar.f32", "empty.f16", "big.f32", "after.f64")}
    del got
    gc.collect()
    junk = [np.ones(1 << 20) for _ in range(8)]  # reuse freed memory if it were freed
    for k, v in keep.items():
        _same(v, ref[k])
    del junk


def test_views_outlive_everything(single):
    ref = st_load_file(single)["big.f32"]
    v = hoist.load_file(single, framework="np", filter="big.f32")["big.f32"][2:4, 100:200]
    gc.collect()
    assert np.array_equal(v, ref[2:4, 100:200])


def test_unconsumed_and_reused_capsules(single):
    from hoist import _hoist

    table = _hoist.Table([single])
    (raw,) = table.load(table.select(["t.1.float32"]))
    caps = [raw.__dlpack__(), raw.__dlpack__(max_version=(1, 0))]
    del caps  # never consumed: the capsule destructors free them
    a = np.from_dlpack(raw)
    b = np.from_dlpack(raw)  # a second export of the same tensor shares the memory
    assert a.ctypes.data == b.ctypes.data
    del raw, table
    gc.collect()
    _same(a, st_load_file(single)["t.1.float32"])
    assert raw_device_is_cpu(a)


def raw_device_is_cpu(a) -> bool:
    return a.__dlpack_device__() == (1, 0)


def test_concurrent_loads_from_threads(single):
    ref = st_load_file(single)
    errors = []

    def work():
        try:
            for _ in range(3):
                _same_as_reference(hoist.load_file(single, framework="np"), [single])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    assert ref


# ----------------------------------------------------------------------------- errors


def test_truncated_file(single, tmp_path):
    p = tmp_path / "truncated.safetensors"
    data = open(single, "rb").read()
    p.write_bytes(data[: len(data) - 1000])
    with pytest.raises(hoist.CheckpointError, match="truncated.safetensors") as e:
        hoist.load_file(str(p), framework="np")
    assert isinstance(e.value, hoist.HoistError)


def test_bad_json_header(tmp_path):
    p = tmp_path / "badjson.safetensors"
    h = b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'  # unterminated
    h += b" " * (-len(h) % 8)
    p.write_bytes(len(h).to_bytes(8, "little") + h + b"\0" * 8)
    with pytest.raises(hoist.CheckpointError, match="badjson.safetensors"):
        hoist.load_file(str(p), framework="np")
    with pytest.raises(hoist.CheckpointError, match="badjson.safetensors"):
        hoist.safe_open(str(p), framework="np")


def test_lying_offsets(tmp_path):
    p = tmp_path / "lying.safetensors"
    helpers.write_safetensors(str(p), [("w", "F32", (4,), b"\0" * 16)])
    raw = bytearray(p.read_bytes())
    hdr_len = int.from_bytes(raw[:8], "little")
    hdr = json.loads(raw[8 : 8 + hdr_len])
    hdr["w"]["shape"] = [8]  # 32 bytes claimed, 16 stored
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    p.write_bytes(len(h).to_bytes(8, "little") + h + b"\0" * 16)
    with pytest.raises(hoist.CheckpointError, match=r"lying.safetensors.*'w'"):
        hoist.load_file(str(p), framework="np")


def test_missing_shard(sharded, tmp_path):
    d, files = sharded
    for f in files[:2]:
        os.symlink(f, tmp_path / os.path.basename(f))
    os.symlink(os.path.join(d, "model.safetensors.index.json"), tmp_path / "model.safetensors.index.json")
    with pytest.raises(hoist.CheckpointError, match="model-00003-of-00003.safetensors") as e:
        hoist.load_file(str(tmp_path), framework="np")
    assert "missing" in str(e.value)


def test_missing_file_is_io_error(tmp_path):
    p = str(tmp_path / "absent.safetensors")
    with pytest.raises(hoist.HoistIOError, match="absent.safetensors") as e:
        hoist.load_file(p, framework="np")
    assert isinstance(e.value, OSError)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(hoist.CheckpointError, match=str(tmp_path)):
        hoist.load_file(str(tmp_path), framework="np")


def test_bad_gguf_magic(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGUX" + b"\0" * 64)
    with pytest.raises(hoist.CheckpointError, match="bad.gguf"):
        hoist.load_file(str(p), framework="np")


# ----------------------------------------------------------------------------- arguments


def test_cuda_without_gpu_is_device_error(single):
    if hoist.cuda_available("cuda:0"):
        pytest.skip("a GPU is usable here")
    with pytest.raises(hoist.DeviceError, match="cuda:0"):
        hoist.load_file(single, device="cuda:0")
    with pytest.raises(hoist.DeviceError):
        hoist.safe_open(single, framework="pt", device="cuda")
    with pytest.raises(hoist.DeviceError):
        next(hoist.iter_tensors(single, device="cuda:0"))


def test_bad_arguments(single):
    with pytest.raises(ValueError, match="device"):
        hoist.load_file(single, device="tpu:0", framework="np")
    with pytest.raises(ValueError, match="framework"):
        hoist.load_file(single, framework="tf")
    with pytest.raises(ValueError, match="numpy"):
        hoist.load_file(single, framework="np", device="cuda:0")
    with pytest.raises(ValueError, match="backend"):
        hoist.load_file(single, framework="np", backend="floppy")
    with pytest.raises(ValueError, match="cache"):
        hoist.load_file(single, framework="np", cache="sometimes")
    with pytest.raises(TypeError):
        hoist.load_file(12, framework="np")
    with pytest.raises(ValueError):
        hoist.load_file([], framework="np")


def test_torch_if_present(single):
    torch = pytest.importorskip("torch")
    got = hoist.load_file(single)
    ref = st_load_file(single)
    for k, v in ref.items():
        assert isinstance(got[k], torch.Tensor)
        assert got[k].numpy().tobytes() == v.tobytes()


class _LegacyOnly:
    """A consumer-side wrapper that forces the pre-1.0 protocol (no max_version)."""

    def __init__(self, raw):
        self.raw = raw

    def __dlpack__(self, stream=None):
        return self.raw.__dlpack__(stream=stream)

    def __dlpack_device__(self):
        return self.raw.__dlpack_device__()


def test_legacy_and_versioned_capsules(single):
    from hoist import _hoist

    table = _hoist.Table([single])
    ref = st_load_file(single)
    for raw in table.load(table.select([])):
        if raw.dtype not in ("F32", "I64", "BOOL", "F16", "U8"):
            continue
        _same(np.from_dlpack(_LegacyOnly(raw)), ref[raw.name])
        _same(np.from_dlpack(raw), ref[raw.name])
    assert type(raw.__dlpack__()).__name__ == "PyCapsule"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_host_memory_freed_with_last_array(tmp_path):
    p = str(tmp_path / "big.safetensors")
    st_save_file({"a": np.ones((64, 1 << 20), np.uint8), "b": np.ones(16, np.float32)}, p)
    gc.collect()
    before = _rss_bytes()
    got = hoist.load_file(p, framework="np")
    assert _rss_bytes() > before + (48 << 20)
    b = got["b"]
    del got
    gc.collect()
    # "b" shares its read region with "a": the region lives while "b" does.
    assert b.sum() == 16
    del b
    gc.collect()
    assert _rss_bytes() < before + (16 << 20)
