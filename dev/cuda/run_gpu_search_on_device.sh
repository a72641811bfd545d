#!/bin/bash
# Issue 8's GPU search in one device call: the proof's search space (configs/search/proof.toml) with every
# trial trained by `--device cuda` (fp32) on the H100, several workers sharing the GPU, for about seven
# minutes; the study database comes back under $OUT (gpu.db) and `linarch report` renders it locally.
#
# Expects build-cuda-sample/search-carry.tar.xz: linarch and lib/ with its shared libraries but glibc's,
# libcuda and the CUDA toolkit's, compressed (the carry takes at most 64 MiB):
#   nice ninja -C build-cuda-sample linarch
#   S=build-cuda-sample/search; rm -rf $S; mkdir -p $S/lib; cp build-cuda-sample/bin/linarch $S/; strip $S/linarch
#   ldd $S/linarch | awk '/=> \// {print $3}' | sort -u \
#       | grep -v -E 'libc\.|libm\.|libdl|libpthread|librt|ld-linux|libcuda\.|libcublas|libcudart' \
#       | xargs -I{} cp -L {} $S/lib/
#   (cd build-cuda-sample && tar -cf - search | xz -T2 -6 > search-carry.tar.xz)
# Device call (the `run` tool): command `bash dev/cuda/run_gpu_search_on_device.sh`, carry
# ["build-cuda-sample/search-carry.tar.xz", "data/kjv"] (the prepared corpus, 17 MB).
set -o pipefail
(cd build-cuda-sample && tar -xJf search-carry.tar.xz)
S=build-cuda-sample/search
export LD_LIBRARY_PATH=$PWD/$S/lib:/usr/local/cuda/lib64:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/gpu.txt
start=$(date +%s)
timeout 570 $S/linarch search --space configs/search/proof.toml --db sqlite:///$OUT/gpu.db --study gpu-proof \
    --device cuda --workers ${WORKERS:-4} --minutes ${MINUTES:-7} --trials 500 --steps 400 --mqar-steps 3000 \
    --mqar-seq-len 32 --mqar-kv-pairs 4 --mqar-vocab 32 --initial-random 6 --runs /tmp/gpu-runs > $OUT/search.log 2>&1
echo "exit $? after $(( $(date +%s) - start )) s"
grep -v "^\[" $OUT/search.log | tail -n 25
