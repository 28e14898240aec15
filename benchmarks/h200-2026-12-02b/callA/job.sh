#!/usr/bin/env bash
# Twelfth round, call A (session 2 of 2026-12-02): the fused chains' params as structs
# (FusedParams) against eee705d (positional words), same call: the fused chain, MLP block,
# add+layernorm and JIT host rows ("fusion chain"), copy, f32 normalizations; PyTorch's
# torch_ref.py; the fusion suite with one thread, autograd, tensor, ops and norm suites.
cd "$(dirname "$0")"
tar xJf bins.tar.xz
export WGK_BACKEND=vulkan
mkdir -p $OUT/r
pack() { tar czf $OUT/callA.tgz -C $OUT r; }
run() { local name=$1; shift; local s=$(date +%s); timeout $1 bash run.sh ${name}_tests "${@:2}" > $OUT/r/$name.txt 2>&1; echo "== $name rc=$? $(( $(date +%s) - s )) s"; grep -E "test result|FAILED|panicked|SKIPPED" $OUT/r/$name.txt | cut -c1-250 | head -6; pack; }
timeout 150 bash run.sh python3 torch_ref.py > $OUT/r/torch_log.txt 2>&1; echo "== torch rc=$?"
grep "^{" $OUT/r/torch_log.txt > $OUT/r/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
for job in "fusion chain" copy "normalizations f32"; do
  tag=$(echo $job | tr ' ' '_')
  for bin in kernels kernels_base; do
    s=$(date +%s); timeout 110 bash run.sh $bin --bench --reference $OUT/r/torch.json --only "$job" --md $OUT/r/${bin}_$tag.md --json $OUT/r/${bin}_$tag.json > $OUT/r/${bin}_$tag.log 2>&1
    echo "== $bin $job rc=$? $(( $(date +%s) - s )) s"; show $OUT/r/${bin}_$tag.md | grep -v "^ *$" | head -24; pack
  done
done
run fusion 120 --test-threads=1
run autograd 40
run tensor 30
run ops 30
