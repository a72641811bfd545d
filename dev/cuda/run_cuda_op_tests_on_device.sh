#!/bin/bash
# One device call that runs every CUDA test (test_ops' Cuda* suites with the CPU DenseOps ones as a
# control, test_train's CudaTraining: 50-step fp32 runs against the CPU), compute-sanitizer memcheck on
# the op suites and racecheck on the mixer ops (the scan's backward shares memory across warps). Logs go
# under $OUT.
#
# Expects build-cuda-sample/carry.tar.xz (carried with the call; the device takes at most 64 MiB and the
# binaries link liblinarch statically, so the directory is compressed): test_ops, test_train, train_step
# and lib/ with their shared libraries but glibc's, libcuda and the CUDA toolkit's (the device has CUDA 13
# in /usr/local/cuda):
#   cmake -S . -B build-cuda-sample -G Ninja -DLINARCH_CUDA=ON -DCMAKE_BUILD_TYPE=Release
#   nice ninja -C build-cuda-sample test_ops test_train train_step
#   C=build-cuda-sample/carry; rm -rf $C; mkdir -p $C/lib
#   cp build-cuda-sample/tests/test_ops build-cuda-sample/tests/test_train build-cuda-sample/bin/train_step $C/
#   strip $C/test_ops $C/test_train $C/train_step
#   ldd $C/test_* $C/train_step | awk '/=> \// {print $3}' | sort -u \
#       | grep -v -E 'libc\.|libm\.|libdl|libpthread|librt|ld-linux|libcuda\.|libcublas|libcudart' \
#       | xargs -I{} cp -L {} $C/lib/
#   (cd build-cuda-sample && tar -cf - carry | xz -T2 -6 > carry.tar.xz)
# Device call (the `run` tool): command `bash dev/cuda/run_cuda_op_tests_on_device.sh`,
# carry ["build-cuda-sample/carry.tar.xz"].
set -o pipefail
source dev/cuda/device_env.sh
timeout 150 $C/test_ops --gtest_filter='Cuda*:DenseOps.*:*.MixedDevicesAreRefused' 2>&1 | tee $OUT/test_ops.log | summary
timeout 180 $C/test_train --gtest_filter='CudaTraining.*' 2>&1 | tee $OUT/test_train.log | summary
timeout 120 compute-sanitizer --tool memcheck $C/test_ops --gtest_filter='CudaMixerOps.*:CudaDense.*' 2>&1 \
    | tail -n 8 | tee $OUT/memcheck.log | grep -E "ERROR SUMMARY|PASSED|FAILED"
timeout 120 compute-sanitizer --tool racecheck $C/test_ops --gtest_filter='CudaMixerOps.*' 2>&1 | tail -n 8 \
    | tee $OUT/racecheck.log | grep -E "RACECHECK SUMMARY|PASSED|FAILED"
# One training step, GPU (fp32, bf16 mixed precision) and CPU (16 threads), of the demo model and a 13M
# one (bench/NOTES.md); Mamba-2's design for the bf16 attention kernels (heads of 64, scalar gate).
for device in cuda cpu; do
    timeout 60 $C/train_step --device $device 2>&1 | tee $OUT/train_step_$device.log | grep -v "^{"
done
for precision in fp32 bf16; do
    timeout 60 $C/train_step --config configs/presets/mamba2.toml --device cuda --precision $precision 2>&1 \
        | tee $OUT/train_step_mamba2_$precision.log | grep -v "^{"
done
