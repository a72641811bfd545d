// GPU tests report themselves skipped (not passed or failed) where no usable CUDA GPU is present.
#pragma once
#include <gtest/gtest.h>

#include "backend/cuda/device.hpp"

// GTEST_SKIP returns from the function it is in, so this must expand inside the test body.
#define SKIP_WITHOUT_GPU() \
    if (linarch::cuda::device_count() == 0) \
    GTEST_SKIP() << "no usable CUDA GPU: " << linarch::cuda::describe_device()
