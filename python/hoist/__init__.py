"""hoist: load LLM checkpoint weights into torch or numpy as fast as the hardware allows.

Reads safetensors checkpoints (one file, a list of shards, a ``model.safetensors.index.json``,
a directory) and GGUF files with few large reads (io_uring + O_DIRECT for data on disk,
parallel buffered reads for data already in the page cache) straight into the final buffers,
and hands them to torch or numpy through DLPack without a copy.

>>> import hoist
>>> state_dict = hoist.load_file("path/to/checkpoint", device="cuda:0")
>>> model.load_state_dict(state_dict, assign=True)

The tensors own their memory: it stays valid after the call and is freed when the last tensor
sharing it is gone.

``hoist.Model`` generates text with Llama-family models (through hoist's model host):

>>> with hoist.Model("path/to/model", device="cuda:0") as m:
...     print(m.complete("Why is the sky blue?", max_tokens=64).text)
 See ``docs/python.md`` for torch, numpy, transformers and vLLM usage.
"""

from __future__ import annotations

import operator
import os
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from . import _hoist
from ._errors import CheckpointError, DeviceError, HoistError, HoistIOError, SelectionError
from ._generate import Completion, Generation, Model

__all__ = [
    "load_file",
    "safe_open",
    "iter_tensors",
    "tensor_infos",
    "cuda_available",
    "TensorInfo",
    "Model",
    "Generation",
    "Completion",
    "HoistError",
    "CheckpointError",
    "HoistIOError",
    "DeviceError",
    "SelectionError",
    "__version__",
]

__version__: str = _hoist.__version__

PathArg = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]

# 8-bit floats travel as uint8 and are viewed as these (torch names; ml_dtypes names for numpy).
_F8_TORCH = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu"}
_F8_NUMPY = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu"}

# How much safe_open reads ahead when get_tensor misses (in the order keys were listed): more
# onto a GPU, where each load also sets up a pinned staging ring.
_READAHEAD_BYTES = 64 << 20
_READAHEAD_GPU_BYTES = 256 << 20
# iter_tensors onto a GPU loads batches of about this many bytes.
_GPU_BATCH_BYTES = 1 << 30


class TensorInfo(NamedTuple):
    """One tensor's entry in a checkpoint, as read from the headers (no data read)."""

    name: str
    dtype: str
    """Element type as the checkpoint names it: ``"BF16"``, ``"F8_E4M3"``, ``"Q4_K"``, ..."""
    shape: Tuple[int, ...]
    """Logical shape, outermost dimension first (GGUF's order is reversed to match)."""
    nbytes: int
    file: str
    offset: int
    """Absolute byte offset of the tensor in ``file``."""
    ggml_type: Optional[int]
    """The ggml type id for GGUF tensors, else None."""


# ----------------------------------------------------------------------------- arguments


def _paths(paths: PathArg) -> List[str]:
    if isinstance(paths, (str, bytes, os.PathLike)):
        return [os.fsdecode(paths)]
    try:
        out = [os.fsdecode(p) for p in paths]  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(
            f"paths must be a path or a list of paths, not {type(paths).__name__}"
        ) from None
    if not out:
        raise ValueError("paths is empty: give a file, a list of files, or a checkpoint directory")
    return out


def _device(device: Any) -> Optional[int]:
    """None for the CPU, else the CUDA ordinal."""
    if device is None:
        return None
    if isinstance(device, int) and not isinstance(device, bool):
        if device < 0:
            raise ValueError(f"invalid device {device!r}")
        return device
    text = str(device).strip().lower()  # also torch.device
    if text == "cpu":
        return None
    if text == "cuda":
        return 0
    if text.startswith("cuda:"):
        num = text[5:]
        if num.isdigit():
            return int(num)
    raise ValueError(f'invalid device {device!r}: use "cpu", "cuda" or "cuda:N"')


def _framework(framework: str) -> str:
    f = str(framework).lower()
    if f in ("pt", "torch", "pytorch"):
        return "pt"
    if f in ("np", "numpy"):
        return "np"
    raise ValueError(f'unsupported framework {framework!r}: use "pt" (torch) or "np" (numpy)')


def _filters(filter: Union[None, str, Iterable[str]]) -> List[str]:
    if filter is None:
        return []
    if isinstance(filter, str):
        return [filter]
    return [str(f) for f in filter]


ShardArg = Union[None, str, Tuple[int, int, int], Sequence[int]]


def _shard(shard: ShardArg, cuda: Optional[int]) -> Optional[str]:
    """``"DIM:RANK/WORLD"`` for the native side (which checks the numbers), or None."""
    if shard is None:
        return None
    if isinstance(shard, str):
        spec = shard
    else:
        try:
            # operator.index: an int (or numpy integer), never a float truncated to one.
            dim, rank, world = (operator.index(x) for x in shard)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(
                f"shard must be (dim, rank, world) or \"DIM:RANK/WORLD\", not {shard!r}"
            ) from None
        spec = f"{dim}:{rank}/{world}"
    if cuda is not None:
        raise DeviceError(
            f"cuda:{cuda}: sharded loading (shard={shard!r}) onto the GPU is not supported yet; "
            'load the shard with device="cpu" and move the tensors'
        )
    return spec


def _check(framework: str, cuda: Optional[int]) -> None:
    if framework == "np" and cuda is not None:
        raise ValueError('numpy arrays live in host memory: use device="cpu" with framework="np"')
    if cuda is not None:
        ok, why = _hoist.cuda_status(cuda)
        if not ok:
            raise DeviceError(why)


# ----------------------------------------------------------------------------- conversion


def _to_torch(raw: "_hoist.Tensor") -> Any:
    import torch

    t = torch.from_dlpack(raw)
    dt = raw.dtype
    if dt in _F8_TORCH:
        f8 = getattr(torch, _F8_TORCH[dt], None)
        if f8 is not None:
            t = t.view(f8)
    elif dt == "F4" and raw.shape and raw.shape[-1] % 2 == 0:
        f4 = getattr(torch, "float4_e2m1fn_x2", None)
        if f4 is not None:
            t = t.view(f4)
    if raw.ggml_type is not None and raw.raw:
        # Quantized ggml blocks come back as bytes; keep the type with them.
        t.ggml_type = dt
    return t


_ml_dtypes: Any = None


def _ml() -> Any:
    global _ml_dtypes
    if _ml_dtypes is None:
        try:
            import ml_dtypes  # type: ignore[import-not-found]

            _ml_dtypes = ml_dtypes
        except ImportError:
            _ml_dtypes = False
    return _ml_dtypes


def _to_numpy(raw: "_hoist.Tensor") -> Any:
    import numpy as np

    a = np.from_dlpack(raw)
    dt = raw.dtype
    if dt in ("BF16",) or (raw.ggml_type == 30):
        ml = _ml()
        if ml:
            a = a.view(ml.bfloat16)
    elif dt in _F8_NUMPY:
        ml = _ml()
        f8 = getattr(ml, _F8_NUMPY[dt], None) if ml else None
        if f8 is not None:
            a = a.view(f8)
    return a


def _converter(framework: str):
    return _to_torch if framework == "pt" else _to_numpy


def _bf16_as_u16(framework: str) -> bool:
    return framework == "np"


# ----------------------------------------------------------------------------- API


def load_file(
    paths: PathArg,
    device: Any = "cpu",
    *,
    filter: Union[None, str, Iterable[str]] = None,
    framework: str = "pt",
    backend: str = "auto",
    threads: Optional[int] = None,
    cache: str = "auto",
    shard: ShardArg = None,
    shard_filter: Union[None, str, Iterable[str]] = None,
) -> Dict[str, Any]:
    """Loads a checkpoint's tensors.

    Args:
        paths: a ``.safetensors`` or ``.gguf`` file, a list of safetensors files (shards), a
            ``model.safetensors.index.json``, or a directory holding one of those.
        device: ``"cpu"`` or ``"cuda:N"`` (also ``"cuda"``, an int, or a ``torch.device``).
        filter: a glob (``"model.layers.0.*"``) or a list of globs; only matching tensors are
            read. Each glob must match something.
        framework: ``"pt"`` for torch tensors, ``"np"`` for numpy arrays (CPU only).
        backend: ``"auto"`` (default: per chunk, a pool of buffered ``pread`` threads for
            ranges in the page cache (mmap-window copies with 8 threads or more, which
            measured faster there), io_uring for the rest (O_DIRECT or buffered: see
            ``cache``), the ``pread`` pool where O_DIRECT or io_uring is refused), ``"uring"``, ``"pread"`` or ``"mmap"`` (each
            forces one method).
        threads: buffered reader threads (default: one per core).
        cache: whether data read from disk stays in the page cache, so that the next load of
            the same files is fast: ``"keep"`` (buffered reads), ``"bypass"`` (O_DIRECT:
            nothing cached, nothing else evicted; backends ``"auto"`` and ``"uring"`` only,
            ``"pread"`` and ``"mmap"`` always read through the cache) or ``"auto"`` (default:
            keep when the bytes fit in MemAvailable minus 10% of MemTotal, at least 2 GiB).
        shard: ``(dim, rank, world)`` (or ``"DIM:RANK/WORLD"``): load only this
            tensor-parallel rank's slice of each tensor, part ``rank`` of ``world`` equal parts
            along dimension ``dim`` (0: rows, 1: columns; outermost first), holding only its
            bytes (row slices are one range, read alone; column slices are read in few large
            spans through gaps of up to 256 KiB, most of each tensor, and gathered). The tensors come back with the sliced shape, equal to
            ``full.chunk(world, dim)[rank]``. Every loaded tensor is sliced unless
            ``shard_filter`` names which; a tensor that cannot be split evenly (or, GGUF
            quantized, on block boundaries; or has no dimension ``dim``) raises ``ValueError``
            naming it. CPU only for now (``DeviceError`` for ``"cuda:N"``).
        shard_filter: with ``shard``, a glob or list of globs of the tensors to slice; the
            others load whole (replicated on every rank).

    Returns:
        ``{name: tensor}`` in file order. Tensors own their memory (no copy was made; freed
        when the last tensor sharing a read region is gone). dtypes match the checkpoint:
        bf16, f16, f32, f64, float8 (``torch.float8_e4m3fn``/``float8_e5m2``), ints, bool.
        With numpy, bf16 and float8 come back as ``ml_dtypes`` types when ``ml_dtypes`` is
        installed, else as their bit patterns (``uint16`` / ``uint8``). GGUF quantized tensors
        come back as ``uint8`` bytes shaped ``(*outer_dims, bytes_per_row)``; their ggml type
        is in :func:`tensor_infos` (and on torch tensors as ``t.ggml_type``).

    Raises:
        CheckpointError: the checkpoint is malformed (message names file and tensor).
        HoistIOError: a file cannot be opened or read.
        DeviceError: the device cannot be used.
        SelectionError: a filter matches nothing.
    """
    fw = _framework(framework)
    cuda = _device(device)
    _check(fw, cuda)
    spec = _shard(shard, cuda)
    if shard_filter is not None and spec is None:
        raise ValueError("shard_filter needs shard=(dim, rank, world)")
    table = _hoist.Table(_paths(paths))
    indices = table.select(_filters(filter))
    only = _filters(shard_filter) if shard_filter is not None else None
    raws = table.load(indices, cuda, _bf16_as_u16(fw), backend, threads, cache, spec, only)
    conv = _converter(fw)
    return {r.name: conv(r) for r in raws}


def iter_tensors(
    paths: PathArg,
    device: Any = "cpu",
    *,
    filter: Union[None, str, Iterable[str]] = None,
    framework: str = "pt",
    backend: str = "auto",
    threads: Optional[int] = None,
    gpu_batch_bytes: int = _GPU_BATCH_BYTES,
    cache: str = "auto",
) -> Iterator[Tuple[str, Any]]:
    """Yields ``(name, tensor)`` for each tensor of a checkpoint as soon as it is loaded.

    For loaders that copy each weight into an existing parameter (vLLM's ``load_weights``):
    the load runs in the background while the caller consumes tensors. On the CPU each tensor
    is yielded the moment its last byte lands (in completion order, not file order); onto a GPU
    tensors come in file order, loaded in batches of about ``gpu_batch_bytes`` (default 1 GiB,
    the extra GPU memory held while the caller copies). Each tensor is yielded exactly once.
    Other arguments are those of :func:`load_file`. Bad arguments, devices and headers raise from
    this call; read errors raise from the iteration.
    """
    fw = _framework(framework)
    cuda = _device(device)
    _check(fw, cuda)
    table = _hoist.Table(_paths(paths))
    indices = table.select(_filters(filter))
    return _iterate(table, indices, cuda, fw, backend, threads, max(1, int(gpu_batch_bytes)), cache)


def _iterate(table: Any, indices: List[int], cuda: Optional[int], fw: str, backend: str,
             threads: Optional[int], batch_bytes: int, cache: str) -> Iterator[Tuple[str, Any]]:
    conv = _converter(fw)
    if cuda is None:
        for raw in table.stream(indices, None, _bf16_as_u16(fw), backend, threads, cache):
            yield raw.name, conv(raw)
        return
    infos = table.infos()
    batch: List[int] = []
    size = 0
    for i in indices:
        batch.append(i)
        size += infos[i][3]
        if size >= batch_bytes:
            for raw in table.load(batch, cuda, False, backend, threads, cache):
                yield raw.name, conv(raw)
            batch, size = [], 0
    if batch:
        for raw in table.load(batch, cuda, False, backend, threads, cache):
            yield raw.name, conv(raw)


def tensor_infos(paths: PathArg) -> List[TensorInfo]:
    """Every tensor's name, dtype (``"BF16"``, ``"Q4_K"``...), shape, size, file and offset,
    in file order, from the headers only."""
    table = _hoist.Table(_paths(paths))
    return [TensorInfo(n, d, tuple(s), b, str(f), o, g) for (n, d, s, b, f, o, g) in table.infos()]


def cuda_available(device: Any = "cuda:0") -> bool:
    """Whether this build of hoist can load onto ``device`` here (driver, GPU and ordinal)."""
    cuda = _device(device)
    if cuda is None:
        return False
    return bool(_hoist.cuda_status(cuda)[0])


class _Slice:
    """What ``safe_open.get_slice`` returns: shape and dtype without reading, data on
    indexing."""

    def __init__(self, owner: "safe_open", name: str, info: TensorInfo) -> None:
        self._owner = owner
        self._name = name
        self._info = info

    def get_shape(self) -> List[int]:
        return list(self._info.shape)

    def get_dtype(self) -> str:
        return self._info.dtype

    def __getitem__(self, index: Any) -> Any:
        return self._owner.get_tensor(self._name)[index]


class safe_open:
    """A drop-in for ``safetensors.safe_open``: opens a checkpoint's headers; tensors are read
    when asked for.

    ``with hoist.safe_open(path, framework="pt", device="cuda:0") as f:``
    ``    for k in f.keys(): sd[k] = f.get_tensor(k)``

    Unlike safetensors, ``paths`` may also be a list of files, an index or a directory. A
    ``get_tensor`` that misses also reads the next tensors in the order keys were last listed
    (``keys()``: sorted; ``offset_keys()``: file order), up to 64 MiB (256 MiB onto a GPU), in one load, so that the
    usual loop runs at full speed; tensors read ahead are held until asked for or the context
    exits. Each ``get_tensor`` returns a tensor of its own.
    """

    def __init__(
        self,
        filename: PathArg,
        framework: str = "pt",
        device: Any = "cpu",
        *,
        backend: str = "auto",
        threads: Optional[int] = None,
        cache: str = "auto",
    ) -> None:
        self._framework = _framework(framework)
        self._cuda = _device(device)
        _check(self._framework, self._cuda)
        self._table = _hoist.Table(_paths(filename))
        self._backend = backend
        self._threads = threads
        self._cache_policy = cache
        self._infos = [
            TensorInfo(n, d, tuple(s), b, str(f), o, g) for (n, d, s, b, f, o, g) in self._table.infos()
        ]
        self._index = {info.name: i for i, info in enumerate(self._infos)}
        self._sorted = sorted(self._index)
        self._order: List[str] = self._sorted
        self._pos = {n: i for i, n in enumerate(self._order)}
        self._cache: Dict[str, Any] = {}
        self._conv = _converter(self._framework)

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cache.clear()

    def keys(self) -> List[str]:
        """Tensor names, sorted (as safetensors returns them)."""
        self._set_order(self._sorted)
        return list(self._sorted)

    def offset_keys(self) -> List[str]:
        """Tensor names in the order of their data in the files."""
        order = [i.name for i in self._infos]
        self._set_order(order)
        return list(order)

    def metadata(self) -> Optional[Dict[str, Any]]:
        """The ``__metadata__`` of the safetensors file(s) (merged across shards, first
        occurrence wins), or None when there is none; for GGUF, its key/values with their
        types."""
        m = self._table.metadata()
        return m or None

    def tensor_info(self, name: str) -> TensorInfo:
        """The tensor's header entry (dtype incl. ggml type, shape, file, offset)."""
        return self._infos[self._lookup(name)]

    def get_slice(self, name: str) -> _Slice:
        """An object with ``get_shape()``, ``get_dtype()``, and indexing (which reads the
        tensor)."""
        return _Slice(self, name, self._infos[self._lookup(name)])

    def get_tensor(self, name: str) -> Any:
        """The tensor ``name``, read now (with read-ahead) unless already read ahead."""
        raw = self._cache.pop(name, None)
        if raw is None:
            self._lookup(name)
            batch = [name]
            size = self._infos[self._index[name]].nbytes
            pos = self._pos.get(name, -1) + 1
            limit = _READAHEAD_BYTES if self._cuda is None else _READAHEAD_GPU_BYTES
            while size < limit and 0 < pos < len(self._order):
                nxt = self._order[pos]
                pos += 1
                if nxt in self._cache:
                    continue
                nb = self._infos[self._index[nxt]].nbytes
                if size + nb > limit:
                    break
                batch.append(nxt)
                size += nb
            raws = self._load([self._index[n] for n in batch])
            for r in raws:
                if r.name == name:
                    raw = r
                else:
                    self._cache[r.name] = r
        return self._conv(raw)

    def get_tensors(self) -> Dict[str, Any]:
        """Every tensor, read in one load, in file order."""
        self._cache.clear()
        raws = self._load(list(range(len(self._infos))))
        return {r.name: self._conv(r) for r in raws}

    def _set_order(self, order: List[str]) -> None:
        if order is not self._order:
            self._order = order
            self._pos = {n: i for i, n in enumerate(order)}

    def _lookup(self, name: str) -> int:
        i = self._index.get(name)
        if i is None:
            # Raises SelectionError naming the checkpoint.
            self._table.indices([name])
            raise SelectionError(f"no tensor named {name!r}")
        return i

    def _load(self, indices: List[int]) -> List[Any]:
        return self._table.load(
            indices, self._cuda, _bf16_as_u16(self._framework), self._backend, self._threads,
            self._cache_policy,
        )
