#!/bin/bash
# One device call that runs every CUDA op test (test_ops' Cuda* suites, and the CPU DenseOps ones as a
# control), then compute-sanitizer memcheck and racecheck on the dense ops. Logs go under $OUT.
#
# Expects build-cuda-sample/carry/ (carried with the call): test_ops and lib/ with its shared libraries
# but glibc's, libcuda and the CUDA toolkit's (the device has CUDA 13 in /usr/local/cuda):
#   cmake -S . -B build-cuda-sample -G Ninja -DLINARCH_CUDA=ON -DCMAKE_BUILD_TYPE=Release
#   nice ninja -C build-cuda-sample test_ops
#   mkdir -p build-cuda-sample/carry/lib && cp build-cuda-sample/tests/test_ops build-cuda-sample/carry/
#   ldd build-cuda-sample/carry/test_ops | awk '/=> \// {print $3}' | grep -v -E 'libc\.|libm\.|libdl|libpthread|librt|ld-linux|libcuda\.|libcublas|libcudart' \
#       | xargs -I{} cp -L {} build-cuda-sample/carry/lib/
# Device call (the `run` tool): command `bash dev/cuda/run_cuda_op_tests_on_device.sh`,
# carry ["build-cuda-sample/carry"].
set -o pipefail
C=build-cuda-sample/carry
export LD_LIBRARY_PATH=$PWD/$C/lib:/usr/local/cuda/lib64:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version --format=csv | tee $OUT/gpu.txt
timeout 300 $C/test_ops --gtest_filter='Cuda*:DenseOps.*' 2>&1 | tee $OUT/tests.log | grep -E "^\[  (FAILED|SKIPPED) |Failure|actual|PASSED|FAILED TEST"
for tool in memcheck racecheck; do
    timeout 280 compute-sanitizer --tool $tool $C/test_ops --gtest_filter='CudaDense.*' 2>&1 | tail -n 8 \
        | tee $OUT/$tool.log | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED"
done
