"""Small, randomly initialised transformers models (Llama, Qwen2 with tied embeddings), saved
with ``save_pretrained`` (sharded), loaded back through ``hoist.load_file(dir,
device="cuda:0")`` with ``load_state_dict(..., assign=True)`` and through safetensors: every
parameter byte-equal, identical logits (also against the original model). Also the
``hoist.safe_open`` drop-in loop and the vLLM-style streaming copy. GPU machine only; needs
torch, transformers, safetensors and the hoist wheel (no pytest).

    python3 python/tests/gpu/check_transformers.py [NAME-SUBSTRING...]

Ends with 'N passed, N failed'; exit status 1 if anything failed.
"""

from __future__ import annotations

import gc
import glob
import os
import sys

import torch
import transformers
from safetensors.torch import load_file as st_load_file

import hoist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _runner import Runner  # noqa: E402

DEV = "cuda:0"


def llama():
    cfg = transformers.LlamaConfig(
        vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM, cfg


def qwen2():
    cfg = transformers.Qwen2Config(
        vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    return transformers.Qwen2ForCausalLM, cfg


def _build(cls, cfg, dtype, seed):
    """Built on the GPU, so that buffers computed at init (rotary frequencies) are
    bit-identical across models."""
    torch.manual_seed(seed)
    with torch.device(DEV):
        m = cls(cfg)
    return m.to(dtype).eval()


def _load(model, state_dict):
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    assert not unexpected, unexpected
    # Only tied weights may be missing from a checkpoint; re-tie them after assign=True.
    assert all("lm_head" in k for k in missing), missing
    model.tie_weights()
    return model


def _save(model, d):
    model.save_pretrained(d, max_shard_size="1MB")
    files = sorted(glob.glob(os.path.join(d, "*.safetensors")))
    assert len(files) > 1, "expected a sharded checkpoint"
    return files


def _ids(cfg):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, cfg.vocab_size, (2, 24), generator=g).to(DEV)


def same_logits(make, dtype, tmp):
    cls, cfg = make()
    original = _build(cls, cfg, dtype, 0)
    files = _save(original, tmp)

    via_hoist = _load(_build(cls, cfg, dtype, 999), hoist.load_file(tmp, device=DEV))
    ref_sd = {}
    for f in files:
        ref_sd.update(st_load_file(f, device=DEV))
    via_st = _load(_build(cls, cfg, dtype, 999), ref_sd)

    s1, s2 = via_hoist.state_dict(), via_st.state_dict()
    assert list(s1) == list(s2)
    for n in s1:
        p1, p2 = s1[n], s2[n]
        assert p1.device.type == "cuda" and p1.dtype == p2.dtype and p1.shape == p2.shape, n
        assert torch.equal(p1.reshape(-1).view(torch.uint8), p2.reshape(-1).view(torch.uint8)), n
    # The loaded parameters are hoist's memory, not a copy into the fresh model's.
    assert all(p.device.type == "cuda" for p in via_hoist.parameters())

    ids = _ids(cfg)
    with torch.no_grad():
        l_h, l_s, l_o = via_hoist(ids).logits, via_st(ids).logits, original(ids).logits
    assert torch.equal(l_h, l_s), float((l_h - l_s).abs().max())
    assert torch.equal(l_h, l_o), float((l_h - l_o).abs().max())
    del via_hoist, via_st, original
    gc.collect()


def safe_open_drop_in(tmp):
    """The loop transformers/vLLM run over safe_open, with hoist's safe_open swapped in."""
    cls, cfg = llama()
    original = _build(cls, cfg, torch.bfloat16, 0)
    files = _save(original, tmp)
    sd = {}
    for f in files:
        with hoist.safe_open(f, framework="pt", device=DEV) as fh:
            for k in fh.keys():
                sd[k] = fh.get_tensor(k)
    m = _load(_build(cls, cfg, torch.bfloat16, 999), sd)
    ids = _ids(cfg)
    with torch.no_grad():
        assert torch.equal(m(ids).logits, original(ids).logits)


def vllm_style_streaming_copy(tmp):
    """vLLM's pattern: parameters exist; each streamed tensor is copied into its parameter."""
    cls, cfg = llama()
    original = _build(cls, cfg, torch.bfloat16, 0)
    _save(original, tmp)
    for device in (DEV, "cpu"):
        m = _build(cls, cfg, torch.bfloat16, 999)
        params = dict(m.named_parameters())
        seen = set()
        for name, t in hoist.iter_tensors(tmp, device=device):
            params[name].data.copy_(t)
            seen.add(name)
        assert seen == set(params), set(params) ^ seen
        ids = _ids(cfg)
        with torch.no_grad():
            assert torch.equal(m(ids).logits, original(ids).logits), device


def main():
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    print("torch", torch.__version__, "transformers", transformers.__version__)
    r = Runner("check_transformers")
    for make in (llama, qwen2):
        for dtype in (torch.bfloat16, torch.float32):
            r.run(f"same_logits[{make.__name__},{str(dtype)[6:]}]", same_logits, make, dtype)
    r.run("safe_open_drop_in", safe_open_drop_in)
    r.run("vllm_style_streaming_copy", vllm_style_streaming_copy)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
