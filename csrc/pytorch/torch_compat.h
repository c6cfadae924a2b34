// What differs between the torch versions mmlstride builds against, torch 2.1 to the newest.
#pragma once

#include <c10/util/Optional.h>
#include <torch/version.h>

#include <optional>

// Whether the torch being built against is at least major.minor.
#define MMLSTRIDE_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||            \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace mmlstride {

// The optional of torch's C++ API (a `Tensor?` argument, Dispatcher::findSchema): c10's own
// class up to torch 2.3, std::optional from torch 2.4, where c10::optional became its alias.
#if MMLSTRIDE_TORCH_AT_LEAST(2, 4)
template <class T>
using optional = std::optional<T>;
inline constexpr std::nullopt_t nullopt = std::nullopt;
#else
template <class T>
using optional = c10::optional<T>;
inline constexpr c10::nullopt_t nullopt = c10::nullopt;
#endif

}  // namespace mmlstride
