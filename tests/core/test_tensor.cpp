#include <gtest/gtest.h>

#include "core/allocator.hpp"
#include "core/dtype.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "support/testkit.hpp"

using namespace linarch;

TEST(Tensor, ViewsShareStorageAndIndexCorrectly) {
    Tensor t = testkit::random_normal({2, 3, 4}, DType::f32, 1);
    Tensor v = t.view({6, 4});
    EXPECT_TRUE(v.same_storage(t));
    EXPECT_EQ(v.item({4, 2}), t.item({1, 1, 2}));
    Tensor n = t.narrow(2, 1, 2);
    EXPECT_EQ(n.shape(), (Shape{2, 3, 2}));
    EXPECT_FALSE(n.is_contiguous());
    EXPECT_EQ(n.item({1, 2, 0}), t.item({1, 2, 1}));
    Tensor tr = t.transpose(0, 2);
    EXPECT_EQ(tr.shape(), (Shape{4, 3, 2}));
    EXPECT_EQ(tr.item({3, 1, 0}), t.item({0, 1, 3}));
    Tensor c = tr.contiguous();
    EXPECT_TRUE(c.is_contiguous());
    EXPECT_EQ(c.item({3, 1, 0}), t.item({0, 1, 3}));
    EXPECT_EQ(t.select(1, 2).item({1, 3}), t.item({1, 2, 3}));
    EXPECT_EQ(t.view({-1, 4}).shape(), (Shape{6, 4}));
}

TEST(Tensor, BadShapesAndTypesAreErrors) {
    Tensor t = Tensor::zeros({2, 3});
    EXPECT_THROW(t.view({4, 2}), Error);
    EXPECT_THROW(t.narrow(1, 2, 2), Error);
    EXPECT_THROW(t.data<double>(), Error);
    EXPECT_THROW(t.transpose(0, 1).view({6}), Error);
    try {
        check_shape(t, {3, 2}, "weight");
        FAIL() << "expected an error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("weight: expected shape [3, 2], got [2, 3]"), std::string::npos);
    }
}

TEST(Tensor, DtypeConversionsRoundTrip) {
    Tensor t = testkit::random_normal({257}, DType::f64, 2, 3.0);
    // bf16 keeps 8 significant bits, f16 11: relative error bounds follow.
    EXPECT_LT(testkit::relative_error(t.to(DType::bf16), t), 4e-3);
    EXPECT_LT(testkit::relative_error(t.to(DType::f16), t), 5e-4);
    EXPECT_LT(testkit::relative_error(t.to(DType::f32), t), 1e-7);
    // Exactly representable values survive unchanged.
    for (float x : {0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f})
        EXPECT_EQ(f16_to_float(float_to_f16(x)), x);
    for (float x : {0.0f, 1.0f, -3.0f, 1.0e30f}) EXPECT_EQ(bf16_to_float(float_to_bf16(x)), bf16_to_float(float_to_bf16(bf16_to_float(float_to_bf16(x)))));
    // Round to nearest even: 1 + 2^-8 is halfway between two bf16 values and goes to 1.
    EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 0x1p-8f)), 1.0f);
    EXPECT_EQ(f16_to_float(float_to_f16(1.0e6f)), INFINITY);
    EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
}

TEST(Rng, CounterBasedStreamsAreReproducibleAndResumable) {
    RngStream a(42, 7);
    std::vector<uint32_t> first;
    for (int i = 0; i < 10; ++i) first.push_back(a.next_u32());
    RngStream b(42, 7);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(b.next_u32(), first[size_t(i)]);
    // Resuming from a saved counter continues the same sequence (draws are whole blocks of 4).
    RngStream c(42, 7, 1);
    EXPECT_EQ(c.next_u32(), first[4]);
    RngStream other(42, 8);
    EXPECT_NE(other.next_u32(), first[0]);
    // Uniform draws have the right mean and spread.
    RngStream u(testkit::test_seed(), 3);
    double sum = 0, sum_sq = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
        const double x = u.normal();
        sum += x;
        sum_sq += x * x;
    }
    EXPECT_NEAR(sum / n, 0.0, 0.02);
    EXPECT_NEAR(sum_sq / n, 1.0, 0.02);
}

TEST(Allocator, PoolReusesBlocksAndArenaResets) {
    auto& pool = CpuPool::instance();
    void* p = pool.allocate(1000);
    pool.release(p, 1000);
    void* q = pool.allocate(900);  // same size class
    EXPECT_EQ(p, q);
    pool.release(q, 900);
    Arena arena(4096);
    auto* a = arena.allocate_array<float>(100);
    auto* b = arena.allocate_array<float>(2000);  // larger than a block
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % kCpuAlignment, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % kCpuAlignment, 0u);
    EXPECT_GE(arena.used_bytes(), 2100 * sizeof(float));
    arena.reset();
    EXPECT_EQ(arena.used_bytes(), 0u);
    EXPECT_EQ(arena.allocate_array<float>(100), a);
}
