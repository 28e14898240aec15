#!/usr/bin/env bash
# Issue 26: GPT-2 small's data-parallel training step on one and on two H200s (kind
# nvidia-h200-x2). Stage from the checkout root:
#   cargo build --release --example data_parallel
#   ../shared/gpu/stage.sh && cp target/release/examples/data_parallel .gpu/bin/ && strip .gpu/bin/*
#   (cd .gpu && tar cf - bin | xz > bins.tar.xz && rm -rf bin) && cp benchmarks/next/h200x2.sh .gpu/job.sh
#   run(command="bash .gpu/job.sh", carry=[".gpu"], kind="nvidia-h200-x2")
# --devices 1: the one-GPU baseline at the same global batch (8 × 1024); no flag: one
# replica per adapter (2), 4 rows each. The example prints tokens/s and the gradient sync's
# ms per step; scaling efficiency = (2-GPU tokens/s) / (2 × 1-GPU tokens/s).
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan
R=$OUT/r; mkdir -p $R
nvidia-smi -L > $R/gpus.txt 2>&1
timeout 250 bash run.sh data_parallel --model gpt2 --devices 1 --steps 6 > $R/dp1.txt 2>&1; echo "== 1 GPU rc=$?"; tail -2 $R/dp1.txt
timeout 250 bash run.sh data_parallel --model gpt2 --steps 6 > $R/dp2.txt 2>&1; echo "== 2 GPUs rc=$?"; tail -2 $R/dp2.txt
tar czf $OUT/dp.tgz -C $OUT r; rm -rf $R
