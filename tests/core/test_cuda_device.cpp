// The CUDA device as the tensor core sees it. Skipped (not passed) where no GPU is usable.
#include <gtest/gtest.h>

#include "backend/cuda/device.hpp"
#include "core/tensor.hpp"
#include "support/gpu.hpp"
#include "support/testkit.hpp"

using namespace linarch;

TEST(CudaDevice, TensorsRoundTripThroughTheGpu) {
    SKIP_WITHOUT_GPU();
    for (DType dtype : {DType::f32, DType::bf16, DType::f64}) {
        Tensor host = testkit::random_normal({37, 129}, dtype, 1);
        Tensor device = host.to(Device::cuda);
        EXPECT_EQ(device.device(), Device::cuda);
        Tensor back = device.to(Device::cpu);
        EXPECT_EQ(testkit::relative_error(back, host), 0.0);
        // A strided view is made contiguous on the way.
        Tensor column = host.narrow(1, 5, 3).to(Device::cuda).to(Device::cpu);
        EXPECT_EQ(testkit::relative_error(column, host.narrow(1, 5, 3)), 0.0);
    }
}

TEST(CudaDevice, StridedViewsOfGpuTensorsAreGatheredOnTheGpu) {
    SKIP_WITHOUT_GPU();
    for (DType dtype : {DType::f32, DType::bf16, DType::f64}) {
        const Tensor host = testkit::random_normal({5, 37, 12}, dtype, 3);
        const Tensor device = host.to(Device::cuda);
        // narrow on an inner axis, transpose, select: each a strided view of the GPU storage.
        const Tensor views[] = {device.narrow(1, 4, 9), device.transpose(0, 2), device.select(2, 7),
                                device.narrow(2, 3, 5).transpose(0, 1)};
        const Tensor expected[] = {host.narrow(1, 4, 9), host.transpose(0, 2), host.select(2, 7),
                                   host.narrow(2, 3, 5).transpose(0, 1)};
        for (size_t v = 0; v < std::size(views); ++v) {
            const Tensor gathered = views[v].contiguous();
            EXPECT_EQ(gathered.device(), Device::cuda);
            EXPECT_TRUE(gathered.is_contiguous());
            EXPECT_EQ(testkit::relative_error(gathered.to(Device::cpu), expected[v]), 0.0) << v;
            EXPECT_EQ(testkit::relative_error(views[v].to(Device::cpu), expected[v]), 0.0) << v;
        }
    }
}

TEST(CudaDevice, RunningOutOfMemorySaysWhatWasAskedAndWhatIsFree) {
    SKIP_WITHOUT_GPU();
    try {
        Tensor::empty({int64_t(1) << 40}, DType::f32, Device::cuda);  // 4 TiB
        FAIL() << "expected an out-of-memory error";
    } catch (const Error& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find("out of GPU memory"), std::string::npos) << message;
        EXPECT_NE(message.find("MiB free"), std::string::npos) << message;
    }
    // The device is still usable afterwards.
    Tensor small = testkit::random_normal({8}, DType::f32, 2).to(Device::cuda);
    EXPECT_EQ(small.to(Device::cpu).numel(), 8);
}

TEST(CudaDevice, WithoutAGpuRequestsFailWithAClearMessage) {
    if (cuda::device_count() > 0) GTEST_SKIP() << "a GPU is present: " << cuda::describe_device();
    try {
        Tensor::empty({4}, DType::f32, Device::cuda);
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("needs a CUDA GPU"), std::string::npos) << e.what();
    }
}
