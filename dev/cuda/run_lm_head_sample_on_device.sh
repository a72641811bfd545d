#!/bin/bash
# One device call for FlashSampling on the GPU (see dev/cuda/NOTES_lm_head_sample.md): the variant harness
# at the three shapes, the CUDA and CPU fused-sampling op tests, then compute-sanitizer memcheck on the CUDA
# ones. Logs go under $OUT.
#
# Expects build-cuda-sample/carry/ (carried with the call): lm_head_sample, test_ops and lib/ (their shared
# libraries but glibc's, libcuda and the CUDA toolkit's: libcublasLt alone is 540 MB, over the carry limit,
# and the device has CUDA 13 in /usr/local/cuda), built here with the same nvcc:
#   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a dev/cuda/lm_head_sample.cu -lcublasLt \
#        -o build-cuda-sample/carry/lm_head_sample
#   cmake -S . -B build-cuda-sample -G Ninja -DLINARCH_CUDA=ON -DCMAKE_BUILD_TYPE=Release
#   nice ninja -C build-cuda-sample -j1 test_ops
#   cp build-cuda-sample/tests/test_ops build-cuda-sample/carry/
#   mkdir -p build-cuda-sample/carry/lib
#   ldd build-cuda-sample/carry/test_ops | awk '/=> \// {print $3}' | grep -v -E 'libc\.|libm\.|libdl|libpthread|librt|ld-linux|libcuda\.|libcublas|libcudart' \
#       | xargs -I{} cp -L {} build-cuda-sample/carry/lib/
# Device call (the `run` tool): command `bash dev/cuda/run_lm_head_sample_on_device.sh`,
# carry ["build-cuda-sample/carry"].
set -o pipefail
C=build-cuda-sample/carry
export LD_LIBRARY_PATH=$PWD/$C/lib:/usr/local/cuda/lib64:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu.txt
timeout 200 $C/lm_head_sample 2>&1 | tee $OUT/harness.log
timeout 200 $C/test_ops --gtest_filter='CudaFusedSampling.*:FusedSampling.*' 2>&1 | tee $OUT/tests.log
timeout 200 compute-sanitizer --tool memcheck $C/test_ops \
    --gtest_filter='CudaFusedSampling.*:-CudaFusedSampling.TemperatureDrawsFollowSoftmax' 2>&1 | tail -n 12 | tee $OUT/memcheck.log
echo "== summary"
grep -E "FAIL|all checks|best:|matmul alone" $OUT/harness.log
grep -E "PASSED|FAILED|SKIPPED|rows:|chi2" $OUT/tests.log
grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log
