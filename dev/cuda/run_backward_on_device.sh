#!/bin/bash
# One device call for the linear-attention backward (see dev/cuda/NOTES_linear_attention.md): the variant
# harness, the CUDA op tests, the whole test_ops binary, then compute-sanitizer on the backward tests.
# Expects build-cuda2/carry/ (carried): la_backward, test_ops and lib/ (their shared libraries), built
# here with the same nvcc. Logs go under $OUT.
set -o pipefail
C=build-cuda2/carry
export LD_LIBRARY_PATH=$PWD/$C/lib:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu.txt
timeout 200 $C/la_backward 2>&1 | tee $OUT/harness.log
timeout 120 $C/test_ops --gtest_filter='CudaLinearAttention.*' 2>&1 | tee $OUT/tests_cuda.log
timeout 200 $C/test_ops 2>&1 | tail -n 8 | tee $OUT/tests_all.log
F='CudaLinearAttention.ChunkwiseBackward*:CudaLinearAttention.Unimplemented*'
timeout 150 compute-sanitizer --tool memcheck $C/test_ops --gtest_filter="$F" 2>&1 | tail -n 12 | tee $OUT/memcheck.log
timeout 150 compute-sanitizer --tool racecheck $C/test_ops --gtest_filter="$F" 2>&1 | tail -n 12 | tee $OUT/racecheck.log
echo "== summary"; grep -E "FAIL|all checks|^\|" $OUT/harness.log; grep -E "PASSED|FAILED|SKIPPED" $OUT/tests_cuda.log $OUT/tests_all.log
grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $OUT/memcheck.log $OUT/racecheck.log
