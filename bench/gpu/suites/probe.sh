#!/usr/bin/env bash
# Suite `probe`: what the GPU machine has that hoist's GPU paths depend on (one screen): GPU,
# PCIe link, kernel, cores, io_uring, memlock, memory, file systems, the toolkit's cuFile and
# NVRTC, nvidia-fs, fio, torch and safetensors. Carries nothing. Results: $OUT/probe.txt.
source "$(dirname "$0")/../lib/env.sh"
{
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv,noheader
echo "kernel $(uname -r); cores $(nproc); io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null); memlock $(ulimit -l)"
free -g | head -2
df -h / /tmp /var/tmp 2>/dev/null; findmnt -no FSTYPE,SOURCE /var/tmp /tmp 2>/dev/null
echo "$CUDA_LIB: $(ls "$CUDA_LIB" | grep -iE '^lib(cufile|nvrtc|cublas)\.so' | tr '\n' ' ')"
ls /proc/driver/nvidia-fs 2>&1 | head -1; lsmod 2>/dev/null | grep -E 'nvidia' | awk '{print $1}' | tr '\n' ' '; echo
grep -iE '"allow_compat_mode"|"use_poll_mode"' /etc/cufile.json 2>/dev/null
which fio 2>/dev/null || echo "no fio"
python3 -c 'import torch, safetensors; print("torch", torch.__version__, torch.cuda.get_device_name(0), "safetensors", safetensors.__version__)'
} 2>&1 | tee "$OUT/probe.txt"
