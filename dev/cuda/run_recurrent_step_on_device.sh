#!/bin/bash
# One device call for the recurrent (decode) step (see dev/cuda/NOTES_recurrent_step.md): the variant
# harness, the op tests (CPU and CUDA), the existing CUDA linear-attention tests, the whole test_ops, then
# compute-sanitizer (memcheck, racecheck) on the CUDA step tests. Logs go under $OUT.
#
# Expects build-cuda-step/carry/ (carried with the call): recurrent_step, test_ops, decode_step (bench/) and
# lib/ (their shared
# libraries), built here with the same nvcc:
#   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a dev/cuda/recurrent_step.cu \
#        -o build-cuda-step/carry/recurrent_step
#   cmake -S . -B build-cuda-step -G Ninja -DLINARCH_CUDA=ON -DCMAKE_BUILD_TYPE=Release
#   nice ninja -C build-cuda-step -j1 test_ops decode_step
#   cp build-cuda-step/tests/test_ops build-cuda-step/bin/decode_step build-cuda-step/carry/
#   mkdir -p build-cuda-step/carry/lib
#   ldd build-cuda-step/carry/test_ops | awk '/=> \// {print $3}' | grep -v -E 'libc\.|libm\.|libdl|libpthread|librt|ld-linux|libcuda\.' \
#       | xargs -I{} cp -L {} build-cuda-step/carry/lib/
# Device call (the `run` tool): command `bash dev/cuda/run_recurrent_step_on_device.sh`,
# carry ["build-cuda-step/carry"].
set -o pipefail
C=build-cuda-step/carry
export LD_LIBRARY_PATH=$PWD/$C/lib:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv | tee $OUT/gpu.txt
timeout 240 $C/recurrent_step 2>&1 | tee $OUT/harness.log
timeout 60 $C/decode_step 2>&1 | tee $OUT/decode_step.log
timeout 120 $C/test_ops --gtest_filter='CudaRecurrentStep.*:RecurrentStep.*:CudaLinearAttention.*' 2>&1 | tee $OUT/tests_cuda.log
timeout 200 $C/test_ops > $OUT/tests_all.log 2>&1
F='CudaRecurrentStep.*'
timeout 150 compute-sanitizer --tool memcheck $C/test_ops --gtest_filter="$F" 2>&1 | tail -n 12 | tee $OUT/memcheck.log
timeout 150 compute-sanitizer --tool racecheck $C/test_ops --gtest_filter="$F" 2>&1 | tail -n 12 | tee $OUT/racecheck.log
echo "== summary"
grep -E "FAIL|all checks|^\|" $OUT/harness.log | tail -n 40
grep -E "decode step|op call|floor" $OUT/decode_step.log
grep -E "PASSED|FAILED|SKIPPED" $OUT/tests_cuda.log
grep -E "PASSED|FAILED|SKIPPED|Failure" -A3 $OUT/tests_all.log | tail -n 30
grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $OUT/memcheck.log $OUT/racecheck.log
