#pragma once
// Query results as the SQL writers' connection layers hand them over (libpq,
// libmariadb): every value as text, std::nullopt for SQL NULL.

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace quiesce {

using TextRow = std::vector<std::optional<std::string>>;

// The first row's value in `column`; "" when there is no such row or value,
// or it is NULL.
[[nodiscard]] inline std::string first_text(const std::vector<TextRow>& rows, std::size_t column) {
  if (rows.empty() || rows.front().size() <= column || !rows.front()[column]) {
    return "";
  }
  return *rows.front()[column];
}

}  // namespace quiesce
