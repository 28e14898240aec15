#!/usr/bin/env bash
# Twelfth round, call D: train_gpt's step beside PyTorch's same model and step in one call
# (benches/torch_gpt_train.py: eager f32 without TF32, with TF32, bf16 autocast), then
# train_gpt 300 steps in f32 and bf16 (the binaries of call C).
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan
mkdir -p $OUT/r
timeout 200 bash run.sh python3 torch_gpt_train.py > $OUT/r/torch_gpt_train.json 2> $OUT/r/torch_gpt_train.err; echo "== torch rc=$?"; cat $OUT/r/torch_gpt_train.json; tail -3 $OUT/r/torch_gpt_train.err
for v in f32 bf16; do
  timeout 100 bash run.sh train_gpt --steps 300 --dtype $v --svg $OUT/r/loss_$v.svg > $OUT/r/train_$v.txt 2>&1; echo "== train_gpt $v rc=$?"; grep -E "steps in|final" $OUT/r/train_$v.txt
done
tar czf $OUT/callD.tgz -C $OUT r
