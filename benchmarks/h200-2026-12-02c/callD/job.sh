#!/usr/bin/env bash
# Thirteenth round, call D: 16-bit weight gradients from a row-major copy of Xᵀ (split-K as
# before): the dW layout's rows, and the training steps beside torch_gpt2.py --only train.
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan
mkdir -p $OUT/r/prof
timeout 200 bash run.sh python3 torch_gpt2.py --only train > $OUT/r/torch_gpt2.json 2> $OUT/r/torch_gpt2.err; echo "== torch rc=$?"
timeout 150 bash run.sh kernels --only "768x8192" --md $OUT/r/dw.md --json $OUT/r/dw.json > $OUT/r/dw.txt 2>&1; echo "== dw rc=$?"; grep "^| matmul" $OUT/r/dw.md
timeout 200 bash run.sh kernels --only "gpt2 train" --gpt2-profile $OUT/r/prof --reference $OUT/r/torch_gpt2.json --json $OUT/r/train.json --md $OUT/r/train.md > $OUT/r/kernels.txt 2>&1; echo "== train rc=$?"; grep "^| gpt2" $OUT/r/train.md
head -6 $OUT/r/prof/gpt2_train_f16.txt
tar czf $OUT/callD.tgz -C $OUT r
