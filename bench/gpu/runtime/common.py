"""Shared helpers of the runtime checks in bench/gpu/runtime/ (see README.md there).

Imports make_reference.py (crates/runtime/tests/fixtures/) for the llama.cpp-style GGUF
conventions: the q/k row permutation, Llama 3.1 `rope_freqs` factors and the tensor names.
"""

import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
FIXTURES = os.path.join(REPO, "crates", "runtime", "tests", "fixtures")
BIN = os.path.join(REPO, ".carry", "bin")

# No network on the GPU machine: never let transformers try a hub; no progress bars in logs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.dont_write_bytecode = True  # no __pycache__ beside make_reference.py
if FIXTURES not in sys.path:
    sys.path.insert(0, FIXTURES)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import make_reference as mr  # noqa: E402  (permute, llama3_rope_factors, gguf_name)

if HERE not in sys.path:
    sys.path.insert(0, HERE)
from gguf_meta import add_gguf_tokenizer  # noqa: E402,F401  (torch-free, for make_quantized.py)


def log(*args):
    print(*args, flush=True)


def pick_device(name=None):
    """`name` if given, else cuda when torch sees a GPU, else cpu."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def strict_fp32():
    """fp32 matmuls in full fp32 (no TF32) for the references."""
    for f in (lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", False),
              lambda: setattr(torch.backends.cudnn, "allow_tf32", False),
              lambda: torch.set_float32_matmul_precision("highest")):
        try:
            f()
        except Exception as e:  # noqa: BLE001
            log(f"note: {e.__class__.__name__}: {e}")
    if torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32:
        log("WARNING: TF32 matmuls are still allowed: fp32 references are less precise")


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def out_dir(default):
    """$OUT when set (the device run's result folder), else `default`."""
    d = os.environ.get("OUT") or default
    os.makedirs(d, exist_ok=True)
    return d


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def run_cmd(argv, timeout, env=None):
    """Runs `argv` in its own process group; kills the whole group on timeout.

    Returns dict(rc, stdout, stderr, seconds, timed_out). Never raises for the command's own
    failure; a missing binary gives rc 127.
    """
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
    except OSError as e:
        return dict(rc=127, stdout="", stderr=f"cannot start {argv[0]}: {e}", seconds=0.0, timed_out=False)
    try:
        out, err = p.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = p.communicate()
        timed_out = True
    return dict(
        rc=p.returncode if not timed_out else 124,
        stdout=out or "",
        stderr=err or "",
        seconds=time.perf_counter() - t0,
        timed_out=timed_out,
    )


def tail(text, n=8):
    """The last n lines of text, indented, after a newline ("" when there are none)."""
    lines = (text or "").strip().splitlines()
    return "".join("\n    | " + line for line in lines[-n:])


def versions():
    import transformers

    v = dict(torch=torch.__version__, transformers=transformers.__version__, numpy=np.__version__)
    try:
        import gguf  # noqa: F401
        from importlib.metadata import version

        v["gguf"] = version("gguf")
    except Exception:  # noqa: BLE001
        v["gguf"] = None
    if torch.cuda.is_available():
        v["gpu"] = torch.cuda.get_device_name(0)
        v["cuda"] = torch.version.cuda
    return v


# ---------------------------------------------------------------- GGUF (llama.cpp conventions)

def unpermute(w, n_head):
    """Inverse of make_reference.permute (interleaved rows back to HF rotate_half order)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_header(writer, cfg, file_type, name):
    """The llama.cpp metadata hoist's GGUF config reader needs (no tokenizer)."""
    w = writer
    w.add_name(name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(rope_theta(cfg)))
    w.add_rope_dimension_count(head_dim(cfg))
    w.add_key_length(head_dim(cfg))
    w.add_value_length(head_dim(cfg))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(int(file_type))
    if cfg.bos_token_id is not None:
        w.add_bos_token_id(int(cfg.bos_token_id))
    if isinstance(cfg.eos_token_id, int):
        w.add_eos_token_id(int(cfg.eos_token_id))


def rope_params(cfg):
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and rp:
        return rp
    rs = getattr(cfg, "rope_scaling", None)
    return rs if isinstance(rs, dict) else {}


def rope_theta(cfg):
    return rope_params(cfg).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))


def is_llama3_rope(cfg):
    rp = rope_params(cfg)
    return (rp.get("rope_type") or rp.get("type")) == "llama3"


def head_dim(cfg):
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def gguf_tensor_name(hf_name):
    """HF tensor name -> llama.cpp name (make_reference's table, plus the q/k/v biases)."""
    for suffix in ("q_proj", "k_proj", "v_proj"):
        if hf_name.endswith(f"self_attn.{suffix}.bias"):
            layer = hf_name.split(".")[2]
            return f"blk.{layer}.attn_{suffix[0]}.bias"
    return mr.gguf_name(hf_name)


def llama_file_type(qtype):
    import gguf

    return {
        gguf.GGMLQuantizationType.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
        gguf.GGMLQuantizationType.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
        gguf.GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
    }[qtype]


# ---------------------------------------------------------------- Q4_0 on torch (any device)

def q4_0_quantize_torch(x):
    """ggml's quantize_row_q4_0_ref on a torch tensor whose last dim is a multiple of 32.

    Per 32-value block: m = the value of largest |x| (first one on ties), d = m / -8,
    id = 1/d (0 when d == 0), q = min(15, trunc(x*id + 8.5)) with x*id and the + 8.5 each
    rounded to f32 (separate kernels, no FMA), byte j = q[j] | q[j+16] << 4, block = f16 d then
    16 bytes. Returns uint8 of shape [..., cols/32*18] (gguf.quants.quantize's layout).
    """
    assert x.shape[-1] % 32 == 0, x.shape
    shape = x.shape
    b = x.reshape(-1, 32).to(torch.float32)
    imax = b.abs().argmax(dim=-1, keepdim=True)  # first maximal index, like np.argmax
    m = torch.gather(b, -1, imax)
    d = m / -8.0
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / torch.where(d == 0, torch.ones_like(d), d))
    y = b * inv
    y = y + 8.5
    q = torch.clamp(torch.trunc(y), 0, 15).to(torch.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    d16 = d.to(torch.float16).contiguous().view(torch.uint8)  # [n, 2] little-endian
    blocks = torch.cat([d16, packed], dim=-1)
    return blocks.reshape(*shape[:-1], shape[-1] // 32 * 18)


def check_q4_0_quantizer(device, log_fn=log):
    """Bit-compares q4_0_quantize_torch with gguf.quants.quantize; raises on any difference."""
    import gguf

    g = torch.Generator().manual_seed(int(time.time()) & 0xFFFF)
    x = torch.randn(96, 256, generator=g) * torch.rand(96, 1, generator=g) * 3
    x[0, :32] = 0.0  # an all-zero block
    x[1, :32] = 0.5  # all ties: the first one wins
    x[2, :32] = -0.25
    x[3, 5] = -7.0  # negative max
    x[3, 9] = 7.0  # positive tie with a later index
    x[4, :32] = torch.arange(32) - 16.0  # exact multiples
    x[5, 32:64] = 1e-30  # subnormal-ish scale
    ref = gguf.quants.quantize(x.numpy(), gguf.GGMLQuantizationType.Q4_0)
    ours = q4_0_quantize_torch(x.to(device)).cpu().numpy()
    if ref.shape != ours.shape or not np.array_equal(ref, ours):
        bad = int((ref != ours).sum()) if ref.shape == ours.shape else -1
        raise RuntimeError(f"torch Q4_0 quantizer differs from gguf.quants.quantize: {bad} bytes, shapes {ref.shape} {ours.shape}")
    log_fn(f"q4_0 quantizer: bit-identical to gguf.quants.quantize on {x.numel()} values ({device})")
