// A strided n-dimensional array on a device. Storage is shared between views (narrow, view,
// transpose); element offsets and strides are counted in elements, not bytes.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/allocator.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"

namespace linarch {

using Shape = std::vector<int64_t>;
std::string shape_string(const Shape& shape);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& shape);

struct Storage {
    Storage(size_t bytes, Device device);
    ~Storage();
    Storage(const Storage&) = delete;
    Storage& operator=(const Storage&) = delete;
    void* data;
    size_t bytes;
    Device device;
};

class Tensor {
public:
    Tensor() = default;
    static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
    static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
    // CPU tensor holding `values` converted to `dtype`.
    static Tensor from_vector(const Shape& shape, const std::vector<double>& values,
                              DType dtype = DType::f32);

    bool defined() const { return storage_ != nullptr; }
    DType dtype() const { return dtype_; }
    Device device() const { return storage_ ? storage_->device : Device::cpu; }
    const Shape& shape() const { return shape_; }
    const Shape& strides() const { return strides_; }
    int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
    int64_t size(int64_t axis) const;
    int64_t numel() const { return shape_numel(shape_); }
    size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
    bool is_contiguous() const;
    bool same_storage(const Tensor& other) const { return storage_ == other.storage_; }

    // Typed pointer to the first element; checks the element type matches T.
    template <typename T> T* data() {
        check_type(dtype_of<T>());
        return static_cast<T*>(raw_data());
    }
    template <typename T> const T* data() const {
        check_type(dtype_of<T>());
        return static_cast<const T*>(raw_data());
    }
    void* raw_data() const;

    // Views sharing storage.
    Tensor view(const Shape& shape) const;  // needs a contiguous tensor; one axis may be -1
    Tensor narrow(int64_t axis, int64_t start, int64_t length) const;
    Tensor select(int64_t axis, int64_t index) const;  // drops the axis
    Tensor transpose(int64_t axis0, int64_t axis1) const;

    // Copies. On the CPU any layout. On the GPU the destination is contiguous; a strided GPU source of the
    // same dtype is gathered by a kernel, and dtype conversions go through a host copy (fine for
    // initialisation and checkpoints, not hot loops).
    Tensor contiguous() const;
    Tensor clone() const;
    Tensor to(DType dtype) const;
    Tensor to(Device device) const;
    void copy_from(const Tensor& source);  // same shape, any dtypes and devices
    void fill(double value);
    void zero();

    // Element access for tests and small host-side code (any dtype, CPU, strided).
    double item(std::initializer_list<int64_t> index) const;
    double flat(int64_t linear_index) const;  // logical row-major index
    std::vector<double> to_vector() const;    // logical row-major order

private:
    void check_type(DType expected) const;
    int64_t offset_of_linear(int64_t linear_index) const;
    std::shared_ptr<Storage> storage_;
    int64_t offset_ = 0;
    Shape shape_;
    Shape strides_;
    DType dtype_ = DType::f32;
};

// Throws Error unless `tensor` has exactly `expected` as shape. `what` names it in the message.
void check_shape(const Tensor& tensor, const Shape& expected, const char* what);

}  // namespace linarch
