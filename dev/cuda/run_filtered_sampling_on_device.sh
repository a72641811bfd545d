#!/bin/bash
# One device call for top-k / top-p / min-p in the fused CUDA sampler (issue 7): CudaFusedSampling's tests,
# compute-sanitizer memcheck and racecheck on the filtered ones, CudaInference (the engine now samples
# every option but penalties and top-n logprobs on the GPU), and bench/fused_sampling --device cuda at
# issue 7's shapes. Logs under $OUT. Carry build-cuda-sample/carry.tar.xz (test_ops, test_infer,
# fused_sampling and their libraries, packed as dev/cuda/run_cuda_op_tests_on_device.sh says).
set -o pipefail
source dev/cuda/device_env.sh
timeout 150 $C/test_ops --gtest_filter='CudaFusedSampling.*:FusedSampling.*' 2>&1 | tee $OUT/test_sampling.log | summary
timeout 150 compute-sanitizer --tool memcheck $C/test_ops --gtest_filter='CudaFusedSampling.FilteredDrawsAreTheCpuOps*' 2>&1 | tail -n 4 | tee $OUT/memcheck.log
timeout 100 compute-sanitizer --tool racecheck $C/test_ops --gtest_filter='CudaFusedSampling.FilteredDrawsAreTheCpuOps*' 2>&1 | tail -n 4 | tee $OUT/racecheck.log
timeout 120 $C/test_infer --gtest_filter='CudaInference.*' 2>&1 | tee $OUT/test_infer.log | summary; tail -n 3 $OUT/test_infer.log
timeout 200 $C/fused_sampling --device cuda --logit-std 2.5 --repeats 20 2>&1 | tee $OUT/bench.log | grep -v '^{'
