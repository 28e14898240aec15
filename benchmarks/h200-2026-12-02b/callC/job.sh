#!/usr/bin/env bash
# Twelfth round, call C: the nn suite (KV cache, mixed precision, checkpointing, 1000-step
# memory) and autograd on the H200; train_gpt (6 layers, d 384, batch 32 × 256) 300 steps
# each: f32, f32 with checkpointing, f32 with 4 micro-batches, f16 (loss scaling) and bf16,
# with the profile of step 3 for f16. Tokens/s, peak memory beside plan's estimate, the
# held-out loss and generation tokens/s with and without the KV cache per run.
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan
mkdir -p $OUT/r
pack() { tar czf $OUT/callC.tgz -C $OUT r; }
run() { local name=$1; shift; local s=$(date +%s); timeout $1 bash run.sh ${name}_tests "${@:2}" > $OUT/r/$name.txt 2>&1; echo "== $name rc=$? $(( $(date +%s) - s )) s"; grep -E "test result|FAILED|panicked|SKIPPED" $OUT/r/$name.txt | cut -c1-250 | head -6; pack; }
run nn 90
run autograd 40
t() { local tag=$1; shift; local s=$(date +%s); timeout 100 bash run.sh train_gpt --steps 300 --svg $OUT/r/loss_$tag.svg "$@" > $OUT/r/train_$tag.txt 2>&1; echo "== train_gpt $tag rc=$? $(( $(date +%s) - s )) s"; grep -E "corpus|steps in|generation|final|ms " $OUT/r/train_$tag.txt | head -30; pack; }
t f32
t f32_ckpt --checkpointing
t f32_acc4 --accumulate 4
t f16 --dtype f16 --profile
t bf16 --dtype bf16
