"""Writes seed inputs for the fuzz targets: python3 seeds.py corpus (from crates/format/fuzz)."""
import numpy as np, json, sys, os
from safetensors.numpy import save_file
import gguf
from gguf.quants import quantize
d = sys.argv[1]
save_file({"a": np.zeros((2,3), np.float32), "b": np.ones((4,), np.int8)}, f"{d}/safetensors/s1", metadata={"format":"pt"})
save_file({"w": np.zeros((1,), np.float16)}, f"{d}/safetensors/s2")
json.dump({"metadata":{"total_size":3},"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}}, open(f"{d}/index/i1","w"))
json.dump({"weight_map":{"x":"a.safetensors","z":"b.safetensors"}}, open(f"{d}/index/i2","w"))
for name, align in [("g1", None), ("g2", 64)]:
    w = gguf.GGUFWriter(f"{d}/gguf/{name}", "llama")
    if align: w.add_custom_alignment(align)
    w.add_uint32("u", 7); w.add_float32("f", 1.5); w.add_bool("b", True); w.add_string("s", "hi")
    w.add_array("arr", [1, 2, 3]); w.add_array("sarr", ["a", "bc"]); w.add_int64("i", -3)
    w.add_tensor("t", np.zeros((2, 4), np.float32))
    q = quantize(np.zeros((2, 32), np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("q", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
