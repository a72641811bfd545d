#!/bin/bash
# One device call for second-order HLA on CUDA (issue 6): its op tests, compute-sanitizer memcheck and
# racecheck on them, CudaInference (now with the HLA presets' decoding) and CudaTraining (now with HLA's
# fp32 runs against the CPU's losses), and a training step of the hla preset at T = 2048 for its speed.
# Logs go under $OUT. Carry build-cuda-sample/carry.tar.xz (test_ops, test_infer, test_train, train_step
# and their libraries, packed as dev/cuda/run_cuda_op_tests_on_device.sh says).
set -o pipefail
source dev/cuda/device_env.sh
timeout 120 $C/test_ops --gtest_filter='CudaHigherOrder*' 2>&1 | tee $OUT/test_hla.log | summary
timeout 150 compute-sanitizer --tool memcheck $C/test_ops --gtest_filter='CudaHigherOrder*' 2>&1 | tail -n 4 | tee $OUT/memcheck.log
timeout 100 compute-sanitizer --tool racecheck $C/test_ops --gtest_filter='CudaHigherOrder.Backward*' 2>&1 | tail -n 4 | tee $OUT/racecheck.log
timeout 120 $C/test_infer --gtest_filter='CudaInference.*' 2>&1 | tee $OUT/test_infer.log | summary
timeout 300 $C/test_train --gtest_filter='CudaTraining.*' 2>&1 | tee $OUT/test_train.log | summary
for precision in fp32 bf16; do
  timeout 60 $C/train_step --device cuda --precision $precision --config configs/presets/hla.toml --set data.seq_len=2048 --set data.batch_size=8 2>&1 | tail -1 | tee -a $OUT/train_step.log
done
