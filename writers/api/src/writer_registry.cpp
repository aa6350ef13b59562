#include "quiesce/writer_registry.hpp"

#include <stdexcept>

namespace quiesce {

void WriterRegistry::add(WriterType type) {
  if (!type.create) {
    throw std::invalid_argument("writer type '" + type.type + "' has no factory");
  }
  auto name = type.type;
  if (!types_.emplace(name, std::move(type)).second) {
    throw std::invalid_argument("writer type '" + name + "' registered twice");
  }
}

const WriterType* WriterRegistry::find(std::string_view type) const {
  auto it = types_.find(type);
  return it == types_.end() ? nullptr : &it->second;
}

std::vector<std::string> WriterRegistry::type_names() const {
  std::vector<std::string> names;
  for (const auto& [name, type] : types_) {
    names.push_back(name);
  }
  return names;
}

}  // namespace quiesce
