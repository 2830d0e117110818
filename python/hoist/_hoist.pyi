"""Type stubs of hoist's native module (the public API is in ``hoist``)."""

from os import PathLike
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

__version__: str
GPU_SUPPORT: bool

class Tensor:
    """One loaded tensor; a DLPack producer (``torch.from_dlpack`` / ``numpy.from_dlpack``)."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def shape(self) -> Tuple[int, ...]: ...
    @property
    def export_shape(self) -> Tuple[int, ...]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def ggml_type(self) -> Optional[int]: ...
    @property
    def raw(self) -> bool: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...
    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any: ...

class Stream(Iterator[Tensor]):
    def __iter__(self) -> "Stream": ...
    def __next__(self) -> Tensor: ...

class Table:
    def __init__(self, paths: Sequence[Union[str, PathLike]]) -> None: ...
    def __len__(self) -> int: ...
    def names(self) -> List[str]: ...
    def infos(self) -> List[Tuple[str, str, List[int], int, str, int, Optional[int]]]: ...
    def skipped(self) -> List[Tuple[str, str]]: ...
    def files(self) -> List[str]: ...
    def format(self) -> str: ...
    def metadata(self) -> Dict[str, Any]: ...
    def select(self, globs: List[str]) -> List[int]: ...
    def indices(self, names: List[str]) -> List[int]: ...
    def load(
        self,
        indices: List[int],
        cuda: Optional[int] = None,
        bf16_as_u16: bool = False,
        backend: str = "auto",
        threads: Optional[int] = None,
        cache: str = "auto",
        shard: Optional[str] = None,
        shard_only: Optional[List[str]] = None,
    ) -> List[Tensor]: ...
    def stream(
        self,
        indices: List[int],
        cuda: Optional[int] = None,
        bf16_as_u16: bool = False,
        backend: str = "auto",
        threads: Optional[int] = None,
        cache: str = "auto",
    ) -> Stream: ...

class Generation(Iterator[str]):
    """One reply being generated; iterating yields its text pieces."""

    def __iter__(self) -> "Generation": ...
    def __next__(self) -> str: ...
    def cancel(self) -> None: ...
    def result(self) -> Tuple[str, List[int], Dict[str, Any]]: ...

class Model:
    """A model on the engine's owner thread."""

    def __init__(
        self,
        path: Union[str, PathLike],
        cuda: Optional[int] = None,
        context: Optional[int] = None,
        raw: bool = False,
        pool_size: int = 4,
        gpu_memory: Optional[str] = None,
        host_memory: Optional[str] = None,
        cache: str = "auto",
        parallel: int = 1,
    ) -> None: ...
    @property
    def context(self) -> int: ...
    def encode(self, prompt: str) -> List[int]: ...
    def generate(
        self,
        prompt: Optional[str] = None,
        messages: Optional[List[Tuple[str, str]]] = None,
        tokens: Optional[List[int]] = None,
        max_tokens: int = 256,
        temperature: float = 0.7,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: List[str] = ...,
        session: Optional[str] = None,
    ) -> Generation: ...
    def close(self) -> None: ...

def cuda_status(ordinal: int) -> Tuple[bool, str]: ...
