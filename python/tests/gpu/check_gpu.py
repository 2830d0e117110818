"""GPU checks of the hoist Python package, for the GPU machine (needs torch, safetensors, numpy
and the hoist wheel; no pytest).

Every tensor that ``hoist.load_file(..., device="cuda:0")`` returns is compared byte-for-byte
with ``safetensors.torch.load_file(..., device="cuda:0")``, on fresh random checkpoints with
every dtype torch has (bf16, f16, f32, f64, float8 e4m3fn/e5m2, ints, uints, bool), scalars,
zero-size tensors and tensors larger than a read chunk; single files, lists, index, sharded
directories; plus safe_open, iter_tensors, memory release, errors and GGUF.

    python3 python/tests/gpu/check_gpu.py [NAME-SUBSTRING...]

Ends with 'N passed, N failed'; exit status 1 if anything failed.
"""

from __future__ import annotations

import gc
import os
import sys

import numpy as np
import safetensors
import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save_file as st_save_file

import hoist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))
import helpers  # noqa: E402
from _runner import Runner, raises  # noqa: E402

CUDA0 = torch.device("cuda:0")


def _dtypes():
    names = [
        "bfloat16", "float16", "float32", "float64", "float8_e4m3fn", "float8_e5m2",
        "int8", "uint8", "int16", "int32", "int64", "bool", "uint16", "uint32", "uint64",
    ]
    return [getattr(torch, n) for n in names if hasattr(torch, n)]


def _random(g, dtype, shape):
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 4).to(dtype)
    if dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        info = torch.iinfo(dtype)
        return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)
    # uint16/32/64 (limited op support in torch): small values through int64
    return torch.randint(0, 1 << 15, shape, generator=g, dtype=torch.int64).to(dtype)


def _bytes(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _same(a, b):
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.device == b.device, (a.device, b.device)
    assert torch.equal(_bytes(a), _bytes(b))


def _same_dicts(got, ref):
    assert sorted(got) == sorted(ref), (sorted(set(got) ^ set(ref)))[:10]
    for k in ref:
        try:
            _same(got[k], ref[k])
        except AssertionError as e:
            raise AssertionError(f"tensor {k}: {e}") from e


def _ref(files, device="cuda:0"):
    out = {}
    for f in files:
        out.update(st_load_file(f, device=device))
    return out


def make_checkpoints(d):
    """A single file with every dtype, and a 3-shard directory with an index."""
    g = torch.Generator().manual_seed(7)
    t = {}
    for i, dt in enumerate(_dtypes()):
        name = str(dt).replace("torch.", "")
        t[f"w.{i}.{name}"] = _random(g, dt, (5, 7 + i))
        t[f"s.{i}.{name}"] = _random(g, dt, ())
        t[f"z.{i}.{name}"] = _random(g, dt, (0, 3))
    t["big.bf16"] = _random(g, torch.bfloat16, (3, 5 << 20))  # 30 MiB: several chunks
    single = os.path.join(d, "model.safetensors")
    st_save_file(t, single, metadata={"format": "pt"})

    sd = os.path.join(d, "sharded")
    os.mkdir(sd)
    names = sorted(t)
    weight_map, files, total = {}, [], 0
    for s in range(3):
        part = {k: t[k] for k in names[s::3]}
        fname = f"model-{s + 1:05d}-of-00003.safetensors"
        st_save_file(part, os.path.join(sd, fname), metadata={"format": "pt"})
        files.append(os.path.join(sd, fname))
        for k, v in part.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    helpers.write_index(sd, weight_map, total)
    return single, sd, files


# ----------------------------------------------------------------------------- checks


def single_file_equals_safetensors(single, sd, files):
    _same_dicts(hoist.load_file(single, device="cuda:0"), _ref([single]))


def sharded_dir_equals_safetensors(single, sd, files, backend):
    _same_dicts(hoist.load_file(sd, device="cuda:0", backend=backend), _ref(files))


def list_and_index(single, sd, files):
    _same_dicts(hoist.load_file(files, device="cuda:0"), _ref(files))
    _same_dicts(hoist.load_file(os.path.join(sd, "model.safetensors.index.json"), device="cuda:0"), _ref(files))


def device_spellings(single, sd, files):
    for dev in ("cuda", 0, torch.device("cuda:0"), torch.device("cuda")):
        got = hoist.load_file(single, device=dev, filter="w.*")
        assert got and all(v.device == CUDA0 for v in got.values()), dev


def cpu_torch_equals_safetensors(single, sd, files):
    _same_dicts(hoist.load_file(single), _ref([single], device="cpu"))
    _same_dicts(hoist.load_file(sd), _ref(files, device="cpu"))


def filter_globs(single, sd, files):
    got = hoist.load_file(single, device="cuda:0", filter=["big.*", "s.*"])
    ref = _ref([single])
    _same_dicts(got, {k: v for k, v in ref.items() if k.startswith(("big.", "s."))})


def safe_open_parity(single, sd, files):
    with safetensors.safe_open(single, framework="pt", device="cuda:0") as ref, hoist.safe_open(
        single, framework="pt", device="cuda:0"
    ) as f:
        assert f.keys() == list(ref.keys())
        assert f.metadata() == ref.metadata()
        for k in f.keys():
            _same(f.get_tensor(k), ref.get_tensor(k))
            assert f.get_slice(k).get_shape() == list(ref.get_slice(k).get_shape())


def iter_tensors_cuda_and_cpu(single, sd, files):
    ref = _ref(files)
    seen = {}
    for name, t in hoist.iter_tensors(sd, device="cuda:0"):
        assert name not in seen, name
        seen[name] = t
    _same_dicts(seen, ref)
    seen = {}
    for name, t in hoist.iter_tensors(sd):  # host tensors, copied like vLLM's loaders do
        assert name not in seen, name
        seen[name] = t.to("cuda:0")
    _same_dicts(seen, ref)


def tensors_own_memory_and_free_it(single, sd, files):
    refs = _ref([single])
    ref_big, ref_s = refs["big.bf16"][1:2, :1000].clone(), refs["s.0.bfloat16"].clone()
    del refs
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free0 = torch.cuda.mem_get_info(0)[0]
    got = hoist.load_file(single, device="cuda:0")
    assert torch.cuda.mem_get_info(0)[0] < free0 - (30 << 20), "hoist's allocations not seen"
    keep = got["big.bf16"][1:2, :1000].clone()  # a torch-owned copy
    view = got["s.0.bfloat16"]  # keeps its whole read region alive
    del got
    gc.collect()
    _same(view, ref_s)
    assert torch.equal(keep, ref_big)
    del view, keep
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free1 = torch.cuda.mem_get_info(0)[0]
    # Everything hoist allocated is back (8 MiB allowed for unrelated driver noise).
    assert free1 >= free0 - (8 << 20), (free0, free1)


def repeated_loads_do_not_leak(single, sd, files):
    torch.cuda.synchronize()
    free0 = torch.cuda.mem_get_info(0)[0]
    for _ in range(5):
        got = hoist.load_file(sd, device="cuda:0")
        assert len(got) == len(_ref(files, device="cpu"))
        del got
        gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    assert torch.cuda.mem_get_info(0)[0] >= free0 - (8 << 20)


def in_place_ops_and_autograd(single, sd, files):
    t = hoist.load_file(single, device="cuda:0", filter="w.2.float32")["w.2.float32"]
    before = t.clone()
    t.add_(1.0)
    assert torch.equal(t, before + 1.0)
    p = torch.nn.Parameter(t)
    (p * 2).sum().backward()
    assert p.grad is not None


def bad_ordinal_is_device_error(single, sd, files):
    n = torch.cuda.device_count()
    with raises(hoist.DeviceError, match=f"cuda:{n}"):
        hoist.load_file(single, device=f"cuda:{n}")


def malformed_is_checkpoint_error(single, sd, files, tmp):
    p = os.path.join(tmp, "cut.safetensors")
    with open(single, "rb") as f:
        data = f.read()
    with open(p, "wb") as f:
        f.write(data[: len(data) // 2])
    with raises(hoist.CheckpointError, match="cut.safetensors"):
        hoist.load_file(p, device="cuda:0")


def gguf_quantized_to_torch(single, sd, files, tmp):
    p = os.path.join(tmp, "m.gguf")
    rng = np.random.default_rng(3)
    f32 = rng.standard_normal((3, 64)).astype(np.float32)
    q8 = rng.integers(0, 256, 4 * 4 * 34, dtype=np.uint8).tobytes()
    helpers.write_gguf(p, [("a", 0, (3, 64), f32.tobytes()), ("q", 8, (4, 128), q8)], {"general.alignment": 32})
    got = hoist.load_file(p, device="cuda:0")
    assert torch.equal(got["a"].cpu(), torch.from_numpy(f32))
    q = got["q"]
    assert q.dtype == torch.uint8 and tuple(q.shape) == (4, 4 * 34) and q.ggml_type == "Q8_0"
    assert q.cpu().numpy().tobytes() == q8


def main():
    r = Runner("check_gpu")
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hoist-gpu-ckpt-") as d:
        args = make_checkpoints(d)
        r.run("single_file_equals_safetensors", single_file_equals_safetensors, *args)
        for backend in ("auto", "pread", "mmap", "uring"):
            r.run(f"sharded_dir_equals_safetensors[{backend}]", sharded_dir_equals_safetensors, *args, backend)
        for name, fn in [
            ("list_and_index", list_and_index),
            ("device_spellings", device_spellings),
            ("cpu_torch_equals_safetensors", cpu_torch_equals_safetensors),
            ("filter_globs", filter_globs),
            ("safe_open_parity", safe_open_parity),
            ("iter_tensors_cuda_and_cpu", iter_tensors_cuda_and_cpu),
            ("tensors_own_memory_and_free_it", tensors_own_memory_and_free_it),
            ("repeated_loads_do_not_leak", repeated_loads_do_not_leak),
            ("in_place_ops_and_autograd", in_place_ops_and_autograd),
            ("bad_ordinal_is_device_error", bad_ordinal_is_device_error),
            ("malformed_is_checkpoint_error", malformed_is_checkpoint_error),
            ("gguf_quantized_to_torch", gguf_quantized_to_torch),
        ]:
            r.run(name, fn, *args)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
