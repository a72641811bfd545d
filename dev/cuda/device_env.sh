# Sourced by the dev/cuda/run_*_on_device.sh scripts, on the device machine in the repository root:
# unpacks build-cuda-sample/carry.tar.xz (the test binaries, tools and their libraries, packed as
# dev/cuda/run_cuda_op_tests_on_device.sh says), points the loader and the presets at them, records the
# GPU under $OUT, and defines `summary`, the filter that keeps gtest's verdicts and failure lines.
(cd build-cuda-sample && tar -xJf carry.tar.xz)
C=build-cuda-sample/carry
export LD_LIBRARY_PATH=$PWD/$C/lib:/usr/local/cuda/lib64:$LD_LIBRARY_PATH
export LINARCH_SOURCE_DIR=$PWD  # the presets test_train and test_infer read
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee $OUT/gpu.txt
summary() { grep -E "^\[  (FAILED|SKIPPED) |Failure|actual|Expected|Which is|message|PASSED|FAILED TEST| ms\)$|chi2"; }
