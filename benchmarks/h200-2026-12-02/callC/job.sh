#!/usr/bin/env bash
# Eleventh round, call C: the suites on the H200 at the session's kernels (params as
# structs, 16-bit C stored directly, one wgpu instance per process): every tensor-core
# path, the fusion binary with one thread; device churn with the committed library and
# de307a8's; the fused chain (job "fusion chain") with torch_ref.py from the same call.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
mkdir -p $OUT/r
run() { local name=$1; shift; local s=$(date +%s); timeout $1 bash run.sh ${name}_tests "${@:2}" > $OUT/r/$name.txt 2>&1; echo "== $name rc=$? $(( $(date +%s) - s )) s"; grep -E "test result|FAILED|panicked" $OUT/r/$name.txt | cut -c1-250 | head -6; }
run fusion 120 --test-threads=1
run attention 150 --test-threads=4
run matmul 90 --test-threads=4
run lifetime 60
run tensor 40
run norm 60
run optim 40
run ops 40
run autotune 40
for b in churn churn_base; do timeout 60 bash run.sh $b --rounds 64 > $OUT/r/$b.txt 2>&1; echo "== $b rc=$?"; tail -2 $OUT/r/$b.txt; done
timeout 150 bash run.sh python3 torch_ref.py > $OUT/r/torch_log.txt 2>&1; echo "== torch rc=$?"
grep "^{" $OUT/r/torch_log.txt > $OUT/r/torch.json
show() { grep -v "^|---" $1 | awk -F'|' '{print $2,$3,$4,$5,$7,$9,$10}'; }
s=$(date +%s); timeout 200 bash run.sh kernels --reference $OUT/r/torch.json --only "fusion chain" --md $OUT/r/chain.md --json $OUT/r/chain.json > $OUT/r/chain.log 2>&1
echo "== chain rc=$? $(( $(date +%s) - s )) s"; show $OUT/r/chain.md | grep -v "^ *$" | head -30
tar czf $OUT/callC.tgz -C $OUT r
