"""Text generation through ``hoist.Model`` on the CPU reference, with the runtime's tiny Llama
fixture: greedy tokens match ``hoist run``'s (when the binary is built) and repeat, the text
pieces make the reply, stop strings and token limits hold, a follow-up reuses the KV cache,
two threads share one model, and errors are the package's exceptions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

import pytest

import hoist

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "crates", "runtime", "tests", "fixtures")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The Llama fixture with the fixture tokenizer and chat template beside it."""
    d = tmp_path_factory.mktemp("llama")
    for src in ["llama/config.json", "llama/model.safetensors", "tokenizer/tokenizer.json",
                "tokenizer/tokenizer_config.json"]:
        shutil.copy(os.path.join(FIXTURES, src), d)
    return str(d)


@pytest.fixture(scope="module")
def model(model_dir):
    with hoist.Model(model_dir, device="cpu") as m:
        yield m


def _hoist_binary():
    for profile in ("release", "debug"):
        exe = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                           profile, "hoist")
        if os.access(exe, os.X_OK):
            return exe
    return None


def test_greedy_reply_is_what_hoist_run_prints(model, model_dir):
    c = model.complete("hi", max_tokens=8, temperature=0)
    assert c.stats["generated_tokens"] == len(c.tokens) == 8
    assert c.stats["stop"] == "max_tokens"
    assert c.stats["prompt_tokens"] == len(model.encode("hi"))
    assert model.complete("hi", max_tokens=8, temperature=0).tokens == c.tokens
    exe = _hoist_binary()
    if exe is None:
        pytest.skip("the hoist binary is not built (cargo build)")
    out = subprocess.run(
        [exe, "run", model_dir, "--device", "cpu", "--temperature", "0", "--max-tokens", "8",
         "--prompt", "hi", "--json"],
        check=True, capture_output=True, text=True,
    )
    doc = json.loads(out.stdout)
    assert (c.text, c.tokens) == (doc["text"], doc["tokens"])


def test_pieces_make_the_text_and_stop_strings_end_it(model):
    g = model.generate("hi", max_tokens=8, temperature=0)
    pieces = list(g)
    full = g.result()
    assert "".join(pieces) == full.text
    assert len(full.text) >= 4
    stop = full.text[len(full.text) // 2:][:2]
    cut = model.complete("hi", max_tokens=8, temperature=0, stop=[stop])
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.stats["stop"] == "stop_string"


def test_a_follow_up_reuses_the_cache(model):
    first = [{"role": "user", "content": "Hello there"}]
    r1 = model.complete(first, max_tokens=1, temperature=0, session="chat")
    follow = first + [{"role": "assistant", "content": r1.text},
                      {"role": "user", "content": "How are you?"}]
    r2 = model.complete(follow, max_tokens=4, temperature=0, session="chat")
    assert r2.stats["cached_tokens"] == r1.stats["prompt_tokens"]
    assert r2.stats["time_to_first_token_seconds"] > 0


def test_two_threads_share_one_model(model):
    prompts = ["Hello there", "The lazy dog"]
    alone = {p: model.complete(p, max_tokens=6, temperature=0).tokens for p in prompts}
    got, errors = {}, []

    def run(p):
        try:
            got[p] = [model.complete(p, max_tokens=6, temperature=0).tokens for _ in range(3)]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for p in prompts:
        assert got[p] == [alone[p]] * 3


def test_parallel_requests_get_what_they_get_alone(model, model_dir):
    kw = dict(max_tokens=10, temperature=1.1, top_k=0, top_p=1.0, min_p=0.0)
    prompts = ["Hello there", "The lazy dog", "Hello there", "A third one"]
    alone = [model.complete(p, seed=i, **kw).tokens for i, p in enumerate(prompts)]
    with hoist.Model(model_dir, device="cpu", parallel=3) as m:
        got, errors = [None] * len(prompts), []

        def run(i):
            try:
                got[i] = m.complete(prompts[i], seed=i, **kw).tokens
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert got == alone
    for bad in (0, 65, True, "2"):
        with pytest.raises(ValueError, match="parallel"):
            hoist.Model(model_dir, device="cpu", parallel=bad)


def test_seeds_repeat_sampling(model):
    kw = dict(max_tokens=12, temperature=1.2, top_k=0, top_p=1.0, min_p=0.0)
    a = model.complete("Hello, world!", seed=7, **kw).tokens
    assert a == model.complete("Hello, world!", seed=7, **kw).tokens
    assert a != model.complete("Hello, world!", seed=8, **kw).tokens


def test_errors_are_the_packages_exceptions(model, model_dir, tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        model.complete("hi", temperature=-1)
    with pytest.raises(ValueError, match="needs .* positions"):
        model.complete([{"role": "user", "content": "word " * 300}], max_tokens=1)
    with pytest.raises(hoist.CheckpointError, match="has no tokenizer.json"):
        hoist.Model(os.path.join(FIXTURES, "llama"), device="cpu")
    with pytest.raises(hoist.HoistIOError, match="KV cache of"):
        hoist.Model(model_dir, device="cpu", context=10**14)
    m = hoist.Model(model_dir, device="cpu")
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.complete("hi")


def test_memory_budgets_take_sizes_and_refuse_nonsense(model_dir):
    # Budgets matter on a GPU only, but they are checked wherever the model loads.
    with hoist.Model(model_dir, device="cpu", gpu_memory="24GiB", host_memory=2**33) as m:
        assert m.context > 0
    with pytest.raises(ValueError, match="gpu_memory.*24GiB"):
        hoist.Model(model_dir, device="cpu", gpu_memory="lots")
    with pytest.raises(ValueError, match="negative"):
        hoist.Model(model_dir, device="cpu", host_memory=-1)
    with pytest.raises(TypeError, match="host_memory"):
        hoist.Model(model_dir, device="cpu", host_memory=1.5)
    with pytest.raises(ValueError, match="auto, keep or bypass"):
        hoist.Model(model_dir, device="cpu", cache="sometimes")
    with hoist.Model(model_dir, device="cpu", cache="bypass") as m:
        assert m.context > 0
