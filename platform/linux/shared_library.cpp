#include "platform/shared_library.hpp"

#include <dlfcn.h>

#include <utility>

namespace quiesce::platform {

SharedLibraryError::SharedLibraryError(const std::string& library, std::string reason)
    : std::runtime_error("cannot load " + library + " (" + reason + ")"),
      reason_(std::move(reason)) {}

SharedLibrary::SharedLibrary(std::string name) : name_(std::move(name)) {
  ::dlerror();
  handle_ = ::dlopen(name_.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle_ == nullptr) {
    const char* error = ::dlerror();
    throw SharedLibraryError(name_, error != nullptr ? error : "unknown dlopen error");
  }
}

SharedLibrary::~SharedLibrary() {
  if (handle_ != nullptr && !keep_loaded_) {
    ::dlclose(handle_);
  }
}

SharedLibrary::SharedLibrary(SharedLibrary&& other) noexcept
    : name_(std::move(other.name_)),
      handle_(std::exchange(other.handle_, nullptr)),
      keep_loaded_(other.keep_loaded_) {}

SharedLibrary& SharedLibrary::operator=(SharedLibrary&& other) noexcept {
  if (this != &other) {
    if (handle_ != nullptr && !keep_loaded_) {
      ::dlclose(handle_);
    }
    name_ = std::move(other.name_);
    handle_ = std::exchange(other.handle_, nullptr);
    keep_loaded_ = other.keep_loaded_;
  }
  return *this;
}

void* SharedLibrary::address(const char* symbol) const {
  return handle_ != nullptr ? ::dlsym(handle_, symbol) : nullptr;
}

void FunctionResolver::throw_if_missing() const {
  if (missing_.empty()) {
    return;
  }
  std::string names;
  for (const auto& name : missing_) {
    names += (names.empty() ? "" : ", ") + name;
  }
  throw SharedLibraryError(library_.name(),
                           "it lacks " + names + "; an older version than the writer needs?");
}

}  // namespace quiesce::platform
