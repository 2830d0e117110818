"""Loads a safetensors checkpoint onto cuda:0 with one peer loader, in this fresh process, and
prints one JSON line: loader, seconds (from just before the load call to after
torch.cuda.synchronize(), CUDA context already up), bytes, tensors, GB/s.

usage: python3 peer.py LOADER PATH   (LOADER: safetensors, fastsafetensors, runai,
instanttensor, instanttensor-buffered; PATH: a .safetensors file or a directory of shards)
"""
import glob
import json
import os
import sys
import time


def files_of(path):
    if os.path.isdir(path):
        return sorted(glob.glob(os.path.join(path, "*.safetensors")))
    return [path]


def load_safetensors(files):
    from safetensors.torch import load_file
    out = {}
    for f in files:
        out.update(load_file(f, device="cuda:0"))
    return out, None


def load_fastsafetensors(files):
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup
    loader = SafeTensorsFileLoader(SingleGroup(), device="cuda:0", nogds=True)
    loader.add_filenames({0: files})
    fb = loader.copy_files_to_device()
    out = {k: fb.get_tensor(k) for k in loader.get_keys()}
    return out, (fb, loader)  # tensors are views into fb: keep it alive


def load_runai(files):
    from runai_model_streamer import SafetensorsStreamer
    out = {}
    with SafetensorsStreamer() as s:
        s.stream_files(files, device="cuda:0")
        for name, t in s.get_tensors():
            out[name] = t
    return out, None


def load_instanttensor(files, buffered=False):
    from instanttensor import safe_open
    kw = {}
    if buffered:
        from instanttensor import BackendPolicy
        kw["backend"] = BackendPolicy.BUFFERED
    out = {}
    with safe_open(files, framework="pt", device=0, **kw) as f:
        for name, t in f.tensors():
            out[name] = t
    return out, None


LOADERS = {
    "safetensors": load_safetensors,
    "fastsafetensors": load_fastsafetensors,
    "runai": load_runai,
    "instanttensor": load_instanttensor,
    "instanttensor-buffered": lambda f: load_instanttensor(f, buffered=True),
}


def main():
    name, path = sys.argv[1], sys.argv[2]
    import torch
    torch.zeros(1, device="cuda:0")
    torch.cuda.synchronize()
    files = files_of(path)
    t0 = time.perf_counter()
    tensors, keep = LOADERS[name](files)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    cuda0 = torch.device("cuda:0")
    off = [k for k, t in tensors.items() if t.device != cuda0]
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    print(json.dumps({"loader": name, "seconds": seconds, "bytes": nbytes, "tensors": len(tensors),
                      "gbps": nbytes / seconds / 1e9, "not_on_cuda0": len(off)}))
    del keep


if __name__ == "__main__":
    main()
