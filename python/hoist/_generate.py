"""Text generation: ``hoist.Model``, a client of hoist's model host (the Rust ``hoist-engine``).

The model runs on a thread of its own; ``generate`` queues a request and returns an iterator of
text pieces that waits for them with the GIL released. Several Python threads may generate on
one model at once: requests are served in arrival order, one at a time or (``parallel``) that
many decoded together, each on the KV cache that already holds the longest start of its prompt
(a chat's follow-up feeds only what is new).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from . import _hoist

Messages = Sequence[Union[Mapping[str, str], Tuple[str, str]]]
Prompt = Union[str, Messages, Sequence[int]]


class Completion(NamedTuple):
    """A finished reply."""

    text: str
    """Its text (stop string and end token excluded)."""
    tokens: List[int]
    """Its token ids (an end token that stopped it included)."""
    stats: Dict[str, Any]
    """``stop`` (``eos``, ``stop_string``, ``max_tokens``, ``context_full``, ``cancelled``),
    ``prompt_tokens``, ``cached_tokens`` (reused from a KV cache), ``generated_tokens``,
    ``prefill_seconds``, ``prefill_tokens_per_s``, ``decode_seconds``, ``decode_tokens_per_s``,
    ``time_to_first_token_seconds`` (from the call, queueing included)."""


class Generation:
    """One reply being generated: iterate for its text pieces; ``result()`` waits for the end.

    Dropping it (or ``cancel()``) stops the generation within one decode step.
    """

    def __init__(self, raw: "_hoist.Generation") -> None:
        self._raw = raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def cancel(self) -> None:
        """Stops the generation; what it produced so far stays in ``result()``."""
        self._raw.cancel()

    def result(self) -> Completion:
        """Waits for the end (consuming what text is left) and returns the whole reply."""
        text, tokens, stats = self._raw.result()
        return Completion(text, tokens, stats)


def _messages(messages: Messages) -> List[Tuple[str, str]]:
    out = []
    for m in messages:
        if isinstance(m, Mapping):
            out.append((str(m["role"]), str(m["content"])))
        else:
            role, content = m
            out.append((str(role), str(content)))
    return out


def _cuda(device: Any) -> Optional[int]:
    # The same device syntax as load_file.
    from . import _device

    return _device(device)


def _size(name: str, value: Union[int, str, None]) -> Optional[str]:
    # Sizes travel as text; the engine parses them (bytes, or "24GiB", "20GB", ...).
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name} takes bytes (int) or a size such as '24GiB', not {value!r}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name} must not be negative, not {value}")
    return str(value)


class Model:
    """A Llama-family model loaded for generation.

    >>> with hoist.Model("path/to/model", device="cuda:0") as m:
    ...     for piece in m.generate("Why is the sky blue?", max_tokens=64):
    ...         print(piece, end="", flush=True)

    ``path`` is a Hugging Face directory (``config.json``, ``tokenizer.json``,
    ``tokenizer_config.json``, ``*.safetensors``) or a GGUF file with an embedded tokenizer.
    ``device`` is ``"cuda:N"`` or ``"cpu"`` (the f32 CPU reference: slow, for tiny models and
    tests). ``context`` is the KV cache's positions per session (default: the model's trained
    length, at most 4096); ``sessions`` how many KV caches are kept for reuse; ``raw`` skips
    the chat template (prompts are tokenized as is).

    ``gpu_memory`` bounds the GPU memory the weights take (bytes, or a size such as
    ``"24GiB"``); layers beyond it are streamed to the GPU at each step, from pinned host
    memory up to ``host_memory`` and from the file past it. Both default as ``hoist run``'s
    ``--gpu-memory`` and ``--host-memory`` do (what is free, less a session's KV cache).
    ``cache`` is ``hoist run --cache``: ``"keep"`` leaves the weights in the page cache for the
    next load, ``"bypass"`` reads them past it, ``"auto"`` keeps what fits.

    ``parallel`` (1 to 64) is ``hoist serve --parallel``: that many requests run at once, each
    decode step one batched pass over all of them (on a GPU the batched products round
    differently from one request's, so a near tie may go the other way).
    """

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]"],
        device: Any = "cuda:0",
        *,
        context: Optional[int] = None,
        sessions: int = 4,
        raw: bool = False,
        gpu_memory: Union[int, str, None] = None,
        host_memory: Union[int, str, None] = None,
        cache: str = "auto",
        parallel: int = 1,
    ) -> None:
        if sessions < 1:
            raise ValueError(f"sessions must be at least 1, not {sessions}")
        if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= 64:
            raise ValueError(f"parallel must be a number of requests from 1 to 64, not {parallel!r}")
        self._raw = _hoist.Model(
            os.fspath(path), _cuda(device), context, raw, sessions,
            _size("gpu_memory", gpu_memory), _size("host_memory", host_memory), cache, parallel,
        )

    @property
    def context(self) -> int:
        """Positions of each session's KV cache."""
        return self._raw.context

    def encode(self, prompt: str) -> List[int]:
        """The token ids ``generate(prompt)`` feeds (the chat template applied)."""
        return self._raw.encode(prompt)

    def generate(
        self,
        prompt: Prompt,
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        seed: Optional[int] = None,
        stop: Sequence[str] = (),
        session: Optional[str] = None,
    ) -> Generation:
        """Starts a reply to ``prompt``: a user message (a ``str``, rendered with the chat
        template), a conversation (``[{"role": ..., "content": ...}, ...]``) or token ids.

        Temperature 0 is greedy. ``stop`` strings end the reply (not included). ``session``
        names a conversation, whose follow-ups then prefer the KV cache it left.
        """
        prompt_text, messages, tokens = None, None, None
        if isinstance(prompt, str):
            prompt_text = prompt
        elif prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            tokens = [int(t) for t in prompt]  # type: ignore[arg-type]
        else:
            messages = _messages(prompt)  # type: ignore[arg-type]
        raw = self._raw.generate(
            prompt_text, messages, tokens, max_tokens, temperature, top_k, top_p, min_p,
            repeat_penalty, seed, list(stop), session,
        )
        return Generation(raw)

    def complete(self, prompt: Prompt, **kwargs: Any) -> Completion:
        """``generate(prompt, **kwargs).result()``: the whole reply at once."""
        return self.generate(prompt, **kwargs).result()

    def close(self) -> None:
        """Frees the model (after requests already queued); later calls raise ValueError."""
        self._raw.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
