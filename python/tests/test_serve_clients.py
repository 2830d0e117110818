"""``hoist serve`` driven by the official clients, unmodified: ``ollama`` (chat, generate, tags,
show, ps, copy, delete, errors, tools) and ``openai`` (chat completions, completions, models,
errors, tool calls), streaming and not, against the runtime's tiny Llama fixture on the CPU. The server is the built
binary (``HOIST_BIN``, else target/{release,debug}/hoist) on a free port."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "crates", "runtime", "tests", "fixtures")
KEY = "test-key"
GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 12}


def _hoist_binary():
    if os.environ.get("HOIST_BIN"):
        return os.environ["HOIST_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    built = [os.path.join(target, p, "hoist") for p in ("release", "debug")]
    built = [exe for exe in built if os.access(exe, os.X_OK)]
    if built:
        # The newest build: an older one may predate `hoist serve`.
        return max(built, key=os.path.getmtime)
    if os.environ.get("HOIST_REQUIRE_PYTHON"):
        pytest.fail("the hoist binary is not built (cargo build) and HOIST_BIN is not set")
    pytest.skip("the hoist binary is not built (cargo build)")


def _serve(d):
    """`hoist serve` of the model in `d` as `tiny` on a free port; yields its base URL."""
    proc = subprocess.Popen(
        [_hoist_binary(), "serve", "--device", "cpu", "--port", "0", "--api-key", KEY,
         "--model", f"tiny={d}"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stderr.readline()
        m = re.search(r"listening on (http://\S+)", line)
        assert m, f"hoist serve did not start: {line!r}"
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _model_dir(tmp_path_factory, chat_template=None):
    d = tmp_path_factory.mktemp("tiny")
    for src in ["llama/config.json", "llama/model.safetensors", "tokenizer/tokenizer.json",
                "tokenizer/tokenizer_config.json"]:
        shutil.copy(os.path.join(FIXTURES, src), d)
    if chat_template is not None:
        path = os.path.join(d, "tokenizer_config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["chat_template"] = chat_template
        with open(path, "w") as f:
            json.dump(cfg, f)
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`hoist serve` on a free port; yields its base URL."""
    yield from _serve(_model_dir(tmp_path_factory))


# A terse Llama 3.1-style template (the fixture's context holds 256 positions): the whole reply
# is the call's JSON; `<|python_tag|>` names the format (as in crates/server/tests/tools.rs).
LLAMA3_TOOLS = (
    "{%- if tools %}{{ tools | tojson }}\n{% endif %}"
    "{%- for m in messages %}{{ m.role[0] }}:{{ m.content }}\n{% endfor %}"
    "{%- if add_generation_prompt %}a:{% endif %}{#- <|python_tag|> #}"
)


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory):
    """`hoist serve` of the fixture with a template that supports tools."""
    yield from _serve(_model_dir(tmp_path_factory, LLAMA3_TOOLS))


@pytest.fixture()
def oc(server):
    return ollama.Client(host=server, headers={"Authorization": f"Bearer {KEY}"})


@pytest.fixture()
def ai(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_ollama_chat_and_generate(oc):
    messages = [{"role": "user", "content": "Hello"}]
    r = oc.chat(model="tiny", messages=messages, options=GREEDY)
    assert r.done and r.message.role == "assistant"
    assert r.eval_count >= 1 and r.total_duration >= r.eval_duration
    assert r.done_reason in ("stop", "length")
    pieces = list(oc.chat(model="tiny", messages=messages, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in pieces) == r.message.content
    assert pieces[-1].done and not any(p.done for p in pieces[:-1])

    g = oc.generate(model="tiny", prompt="Hello", options=GREEDY)
    assert g.response == r.message.content, "the same conversation as the chat"
    streamed = "".join(p.response for p in oc.generate(model="tiny", prompt="Hello",
                                                       options=GREEDY, stream=True))
    assert streamed == g.response


def test_ollama_model_management(oc):
    names = [m.model for m in oc.list().models]
    assert "tiny:latest" in names
    show = oc.show("tiny")
    assert show.modelinfo["general.architecture"] == "llama"
    oc.generate(model="tiny", prompt="", keep_alive=-1)
    running = oc.ps().models
    assert [m.model for m in running] == ["tiny:latest"] and running[0].expires_at is not None
    oc.copy("tiny", "twin:v1")
    assert "twin:v1" in [m.model for m in oc.list().models]
    oc.delete("twin:v1")
    assert "twin:v1" not in [m.model for m in oc.list().models]
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(model="missing", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        oc.generate(model="tiny", prompt="x", format={"type": "string", "pattern": "a+"})
    assert e.value.status_code == 400 and "pattern" in str(e.value)


def test_openai_chat_completions_and_models(ai):
    messages = [{"role": "user", "content": "Hello"}]
    c = ai.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12)
    text = c.choices[0].message.content
    assert c.choices[0].finish_reason in ("stop", "length")
    assert c.usage.completion_tokens >= 1
    chunks = list(ai.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                             max_tokens=12, stream=True,
                                             stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == c.usage.completion_tokens

    done = ai.completions.create(model="tiny", prompt="Once upon", temperature=0, max_tokens=8)
    streamed = "".join(ch.choices[0].text for ch in ai.completions.create(
        model="tiny", prompt="Once upon", temperature=0, max_tokens=8, stream=True))
    assert streamed == done.choices[0].text

    assert "tiny:latest" in [m.id for m in ai.models.list().data]
    assert ai.models.retrieve("tiny:latest").id == "tiny:latest"
    with pytest.raises(openai.NotFoundError):
        ai.chat.completions.create(model="missing", messages=messages)
    with pytest.raises(openai.BadRequestError):
        ai.chat.completions.create(model="tiny", messages=messages,
                                   response_format={"type": "json_schema", "json_schema": {
                                       "name": "x", "schema": {"anyOf": []}}})


# Seeds whose constrained reply completes within the budget on the random fixture (the same as
# crates/server/tests/format.rs); unconstrained, the same request is not JSON.
JSON_PROMPT = [{"role": "user", "content": "Give me JSON."}]


def test_ollama_format_json(oc):
    options = {"temperature": 0.7, "seed": 1, "num_predict": 200}
    free = oc.chat(model="tiny", messages=JSON_PROMPT, options=options).message.content
    with pytest.raises(ValueError):
        json.loads(free)
    r = oc.chat(model="tiny", messages=JSON_PROMPT, options=options, format="json")
    assert r.done_reason == "stop"
    json.loads(r.message.content)


def test_openai_response_format_json_object(ai):
    kw = dict(model="tiny", messages=JSON_PROMPT, temperature=0.7, seed=2, max_tokens=200)
    free = ai.chat.completions.create(**kw).choices[0].message.content
    with pytest.raises(ValueError):
        json.loads(free)
    c = ai.chat.completions.create(**kw, response_format={"type": "json_object"})
    assert c.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(c.choices[0].message.content), dict)


def test_openai_needs_the_key(server):
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


TOOL = {"type": "function", "function": {"name": "w", "description": "weather",
                                         "parameters": {"type": "object", "properties": {}}}}


def test_tools_need_a_template_that_supports_them(oc, ai):
    messages = [{"role": "user", "content": "Paris?"}]
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(model="tiny", messages=messages, tools=[TOOL])
    assert e.value.status_code == 400 and "does not support tools" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        ai.chat.completions.create(model="tiny", messages=messages, tools=[TOOL])
    assert "does not support tools" in str(e.value)


def test_openai_tool_calls(tool_server):
    """A named `tool_choice` forces the call (JSON constraint): the client parses it, whole and
    streamed; the call and its result then go back as history (same seed as the Rust test)."""
    ai = openai.OpenAI(base_url=f"{tool_server}/v1", api_key=KEY, max_retries=0, timeout=60)
    kw = dict(model="tiny", messages=[{"role": "user", "content": "Paris?"}], tools=[TOOL],
              tool_choice={"type": "function", "function": {"name": "w"}},
              max_tokens=150, seed=3, temperature=0.7)
    c = ai.chat.completions.create(**kw)
    assert c.choices[0].finish_reason == "tool_calls"
    call = c.choices[0].message.tool_calls[0]
    assert call.function.name == "w" and json.loads(call.function.arguments) == {}
    assert call.id.startswith("call_")

    chunks = list(ai.chat.completions.create(**kw, stream=True))
    deltas = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [d.function.name for d in deltas if d.function.name] == ["w"]
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    history = kw["messages"] + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    r = ai.chat.completions.create(model="tiny", messages=history, tools=[TOOL], max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_ollama_tools_and_history(tool_server):
    oc = ollama.Client(host=tool_server, headers={"Authorization": f"Bearer {KEY}"})
    messages = [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "w", "arguments": {}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "w"},
    ]
    r = oc.chat(model="tiny", messages=messages, tools=[TOOL], options=GREEDY)
    assert r.done and r.done_reason in ("stop", "length")
    plain = oc.chat(model="tiny", messages=messages, options=GREEDY)
    assert r.prompt_eval_count > plain.prompt_eval_count, "the tools are in the prompt"
