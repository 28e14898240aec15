#!/usr/bin/env bash
# Eleventh round, call A: the suites on the H200 after the restructure (issue 22): every
# tensor-core path, the fusion binary with one thread (item k), the device lifetime test.
cd "$(dirname "$0")"
export WGK_BACKEND=vulkan
mkdir -p $OUT/r
run() { local name=$1; shift; local s=$(date +%s); timeout $1 bash run.sh ${name}_tests "${@:2}" > $OUT/r/$name.txt 2>&1; echo "== $name rc=$? $(( $(date +%s) - s )) s"; grep -E "test result|FAILED|panicked|SKIPPED" $OUT/r/$name.txt | cut -c1-300 | head -8; }
run lifetime 60
run fusion 150 --test-threads=1
run matmul 120 --test-threads=4
run attention 170 --test-threads=4
run tensor 40
run norm 90
run optim 40
run ops 40
run autotune 60
timeout 120 bash run.sh tour > $OUT/r/tour.txt 2>&1; echo "== tour rc=$?"; tail -12 $OUT/r/tour.txt
tar czf $OUT/callA.tgz -C $OUT r
