#include "core/tensor.hpp"

#include <cstring>

#include "backend/cuda/device.hpp"

namespace linarch {

std::string shape_string(const Shape& shape) {
    std::string out = "[";
    for (size_t i = 0; i < shape.size(); ++i) {
        if (i) out += ", ";
        out += std::to_string(shape[i]);
    }
    return out + "]";
}

int64_t shape_numel(const Shape& shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
}

void check_shape(const Tensor& tensor, const Shape& expected, const char* what) {
    LINARCH_CHECK(tensor.shape() == expected, "{}: expected shape {}, got {}", what,
                  shape_string(expected), shape_string(tensor.shape()));
}

Storage::Storage(size_t bytes_, Device device_) : data(nullptr), bytes(bytes_), device(device_) {
    data = device_allocate(device, bytes);
}

Storage::~Storage() { device_release(device, data, bytes); }

namespace {
Shape contiguous_strides(const Shape& shape) {
    Shape strides(shape.size());
    int64_t stride = 1;
    for (size_t i = shape.size(); i-- > 0;) {
        strides[i] = stride;
        stride *= shape[i];
    }
    return strides;
}

double load_as_double(const void* base, DType dtype, int64_t offset) {
    switch (dtype) {
        case DType::f32: return static_cast<const float*>(base)[offset];
        case DType::f64: return static_cast<const double*>(base)[offset];
        case DType::bf16: return bf16_to_float(static_cast<const uint16_t*>(base)[offset]);
        case DType::f16: return f16_to_float(static_cast<const uint16_t*>(base)[offset]);
    }
    return 0;
}

void store_from_double(void* base, DType dtype, int64_t offset, double value) {
    switch (dtype) {
        case DType::f32: static_cast<float*>(base)[offset] = static_cast<float>(value); break;
        case DType::f64: static_cast<double*>(base)[offset] = value; break;
        case DType::bf16:
            static_cast<uint16_t*>(base)[offset] = float_to_bf16(static_cast<float>(value));
            break;
        case DType::f16:
            static_cast<uint16_t*>(base)[offset] = float_to_f16(static_cast<float>(value));
            break;
    }
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
    for (int64_t s : shape) LINARCH_CHECK(s >= 0, "tensor shape {} has a negative size", shape_string(shape));
    Tensor t;
    t.shape_ = shape;
    t.strides_ = contiguous_strides(shape);
    t.dtype_ = dtype;
    t.storage_ = std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
    return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
    Tensor t = empty(shape, dtype, device);
    t.zero();
    return t;
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<double>& values, DType dtype) {
    LINARCH_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
                  "from_vector: {} values for shape {}", values.size(), shape_string(shape));
    Tensor t = empty(shape, dtype);
    for (size_t i = 0; i < values.size(); ++i) store_from_double(t.raw_data(), dtype, int64_t(i), values[i]);
    return t;
}

int64_t Tensor::size(int64_t axis) const {
    if (axis < 0) axis += dim();
    LINARCH_CHECK(axis >= 0 && axis < dim(), "axis {} out of range for shape {}", axis, shape_string(shape_));
    return shape_[axis];
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

void* Tensor::raw_data() const {
    if (!storage_) return nullptr;
    return static_cast<char*>(storage_->data) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

void Tensor::check_type(DType expected) const {
    LINARCH_CHECK(dtype_ == expected, "tensor of dtype {} accessed as {}", dtype_name(dtype_),
                  dtype_name(expected));
}

Tensor Tensor::view(const Shape& shape) const {
    LINARCH_CHECK(is_contiguous(), "view of a non-contiguous tensor of shape {}", shape_string(shape_));
    Shape resolved = shape;
    int64_t known = 1, inferred_axis = -1;
    for (size_t i = 0; i < resolved.size(); ++i) {
        if (resolved[i] == -1) {
            LINARCH_CHECK(inferred_axis < 0, "view {}: only one axis may be -1", shape_string(shape));
            inferred_axis = int64_t(i);
        } else {
            known *= resolved[i];
        }
    }
    if (inferred_axis >= 0 && known > 0) resolved[inferred_axis] = numel() / known;
    LINARCH_CHECK(shape_numel(resolved) == numel(), "cannot view shape {} as {}", shape_string(shape_),
                  shape_string(shape));
    Tensor t = *this;
    t.shape_ = resolved;
    t.strides_ = contiguous_strides(resolved);
    return t;
}

Tensor Tensor::narrow(int64_t axis, int64_t start, int64_t length) const {
    if (axis < 0) axis += dim();
    LINARCH_CHECK(axis >= 0 && axis < dim() && start >= 0 && length >= 0 && start + length <= shape_[axis],
                  "narrow(axis={}, start={}, length={}) out of range for shape {}", axis, start, length,
                  shape_string(shape_));
    Tensor t = *this;
    t.offset_ += start * strides_[axis];
    t.shape_[axis] = length;
    return t;
}

Tensor Tensor::select(int64_t axis, int64_t index) const {
    if (axis < 0) axis += dim();
    Tensor t = narrow(axis, index, 1);
    t.shape_.erase(t.shape_.begin() + axis);
    t.strides_.erase(t.strides_.begin() + axis);
    return t;
}

Tensor Tensor::transpose(int64_t axis0, int64_t axis1) const {
    if (axis0 < 0) axis0 += dim();
    if (axis1 < 0) axis1 += dim();
    LINARCH_CHECK(axis0 >= 0 && axis0 < dim() && axis1 >= 0 && axis1 < dim(),
                  "transpose({}, {}) out of range for shape {}", axis0, axis1, shape_string(shape_));
    Tensor t = *this;
    std::swap(t.shape_[axis0], t.shape_[axis1]);
    std::swap(t.strides_[axis0], t.strides_[axis1]);
    return t;
}

int64_t Tensor::offset_of_linear(int64_t linear_index) const {
    int64_t offset = 0;
    for (int64_t axis = dim() - 1; axis >= 0; --axis) {
        offset += (linear_index % shape_[axis]) * strides_[axis];
        linear_index /= shape_[axis];
    }
    return offset;
}

void Tensor::copy_from(const Tensor& source) {
    LINARCH_CHECK(source.shape_ == shape_, "copy_from: shape {} into {}", shape_string(source.shape_),
                  shape_string(shape_));
    if (device() != Device::cpu || source.device() != Device::cpu) {
        // Between devices or on the GPU: whole contiguous arrays of one dtype, or a strided GPU view
        // gathered on the GPU; anything else goes through a host copy converted there.
        LINARCH_CHECK(is_contiguous(), "copy_from into a non-contiguous {} tensor", device_name(device()));
        if (device() == Device::cuda && source.device() == Device::cuda && dtype_ == source.dtype_ &&
            !source.is_contiguous())
            return cuda::copy_strided(raw_data(), source.raw_data(), source.shape_, source.strides_,
                                      dtype_size(dtype_));
        if (dtype_ != source.dtype_ || !source.is_contiguous()) {
            Tensor host = empty(shape_, dtype_);
            host.copy_from(source.to(Device::cpu));
            return copy_from(host);
        }
        if (nbytes() == 0) return;
        if (device() == Device::cpu) cuda::copy_to_host(raw_data(), source.raw_data(), nbytes());
        else if (source.device() == Device::cpu) cuda::copy_to_device(raw_data(), source.raw_data(), nbytes());
        else cuda::copy_on_device(raw_data(), source.raw_data(), nbytes());
        return;
    }
    if (dtype_ == source.dtype_ && is_contiguous() && source.is_contiguous()) {
        std::memcpy(raw_data(), source.raw_data(), nbytes());
        return;
    }
    const int64_t n = numel();
    for (int64_t i = 0; i < n; ++i)
        store_from_double(raw_data(), dtype_, offset_of_linear(i),
                          load_as_double(source.raw_data(), source.dtype_, source.offset_of_linear(i)));
}

Tensor Tensor::contiguous() const {
    if (is_contiguous()) return *this;
    return clone();
}

Tensor Tensor::clone() const {
    Tensor t = empty(shape_, dtype_, device());
    t.copy_from(*this);
    return t;
}

Tensor Tensor::to(DType dtype) const {
    Tensor t = empty(shape_, dtype, device());
    t.copy_from(*this);
    return t;
}

Tensor Tensor::to(Device target) const {
    if (target == device()) return *this;
    const Tensor src = contiguous();  // (a strided GPU view is gathered on the GPU first)
    Tensor t = empty(shape_, dtype_, target);
    if (target == Device::cuda) cuda::copy_to_device(t.raw_data(), src.raw_data(), nbytes());
    else cuda::copy_to_host(t.raw_data(), src.raw_data(), nbytes());
    return t;
}

void Tensor::fill(double value) {
    if (device() != Device::cpu) {
        Tensor host = empty(shape_, dtype_);
        host.fill(value);
        return copy_from(host);
    }
    const int64_t n = numel();
    if (is_contiguous() && dtype_ == DType::f32) {
        float* p = static_cast<float*>(raw_data());
        for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(value);
        return;
    }
    for (int64_t i = 0; i < n; ++i) store_from_double(raw_data(), dtype_, offset_of_linear(i), value);
}

void Tensor::zero() {
    // All-zero bits are 0.0 in every dtype here.
    if (is_contiguous() && device() == Device::cpu) return (void)std::memset(raw_data(), 0, nbytes());
    if (is_contiguous() && nbytes() > 0) return cuda::fill_zero(raw_data(), nbytes());
    fill(0.0);
}

double Tensor::flat(int64_t linear_index) const {
    LINARCH_CHECK(device() == Device::cpu, "element access on a GPU tensor");
    LINARCH_CHECK(linear_index >= 0 && linear_index < numel(), "index {} out of range for shape {}",
                  linear_index, shape_string(shape_));
    return load_as_double(raw_data(), dtype_, offset_of_linear(linear_index));
}

double Tensor::item(std::initializer_list<int64_t> index) const {
    LINARCH_CHECK(static_cast<int64_t>(index.size()) == dim(), "item: {} indices for shape {}", index.size(),
                  shape_string(shape_));
    int64_t offset = 0, axis = 0;
    for (int64_t i : index) {
        LINARCH_CHECK(i >= 0 && i < shape_[axis], "item: index {} out of range for shape {}", i,
                      shape_string(shape_));
        offset += i * strides_[axis++];
    }
    return load_as_double(raw_data(), dtype_, offset);
}

std::vector<double> Tensor::to_vector() const {
    std::vector<double> out(static_cast<size_t>(numel()));
    for (int64_t i = 0; i < numel(); ++i) out[size_t(i)] = flat(i);
    return out;
}

}  // namespace linarch
