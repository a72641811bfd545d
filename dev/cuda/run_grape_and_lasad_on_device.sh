#!/bin/bash
# One device call for GRAPE-M and LASAD (spatial decay) on CUDA (issue 6): their op tests (and the CPU ones
# and HLA's CUDA ones as controls), compute-sanitizer memcheck on them, CudaInference and CudaTraining (both
# with grape_planes, grape_mixture and spatial-decay models). Logs under $OUT. Carry build-cuda-sample/carry.tar.xz (test_ops,
# test_infer, test_train and their libraries, packed as dev/cuda/run_cuda_op_tests_on_device.sh says).
set -o pipefail
source dev/cuda/device_env.sh
timeout 120 $C/test_ops --gtest_filter='CudaGrape*:Grape*:CudaHigherOrder*:CudaSpatialDecay*:SpatialDecay*' 2>&1 | tee $OUT/test_ops.log | summary
timeout 150 compute-sanitizer --tool memcheck $C/test_ops --gtest_filter='CudaGrape*:CudaSpatialDecay*' 2>&1 | tail -n 4 | tee $OUT/memcheck.log
timeout 120 $C/test_infer --gtest_filter='CudaInference.*' 2>&1 | tee $OUT/test_infer.log | summary
timeout 300 $C/test_train --gtest_filter='CudaTraining.*' 2>&1 | tee $OUT/test_train.log | summary
