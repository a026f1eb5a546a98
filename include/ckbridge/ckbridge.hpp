#pragma once
// Umbrella header: everything host-side. Include the focused headers instead to pay only for
// what you use (format/ readers do not need YAML; CUDA lives in .cuh headers).
#include "ckbridge/core/any_view.hpp"
#include "ckbridge/core/copy.hpp"
#include "ckbridge/core/dtype.hpp"
#include "ckbridge/core/error.hpp"
#include "ckbridge/core/float_bits.hpp"
#include "ckbridge/core/mapped_file.hpp"
#include "ckbridge/core/shape.hpp"
#include "ckbridge/core/tensor.hpp"
#include "ckbridge/core/tensor_view.hpp"
