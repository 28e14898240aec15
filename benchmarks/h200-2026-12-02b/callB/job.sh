#!/usr/bin/env bash
# Twelfth round, call B: the autograd, nn, norm and tensor suites on the H200 (the norms'
# new backward_sg_rows runs there for rows up to 256), then train_gpt without --quick
# (6 layers, d 384, 6 heads, context 256, batch 32 × 256), 600 steps, with the crate's
# profile of step 3.
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan
mkdir -p $OUT/r
pack() { tar czf $OUT/callB.tgz -C $OUT r; }
run() { local name=$1; shift; local s=$(date +%s); timeout $1 bash run.sh ${name}_tests "${@:2}" > $OUT/r/$name.txt 2>&1; echo "== $name rc=$? $(( $(date +%s) - s )) s"; grep -E "test result|FAILED|panicked|SKIPPED" $OUT/r/$name.txt | cut -c1-250 | head -6; pack; }
run autograd 60
run nn 60
run norm 90
run tensor 30
s=$(date +%s); timeout 380 bash run.sh train_gpt --steps 600 --profile --svg $OUT/r/train_gpt_loss.svg --save $OUT/r/train_gpt.safetensors > $OUT/r/train_gpt.txt 2>&1
echo "== train_gpt rc=$? $(( $(date +%s) - s )) s"; grep -v "^\[" $OUT/r/train_gpt.txt | tail -40
rm -f $OUT/r/train_gpt.safetensors
pack
