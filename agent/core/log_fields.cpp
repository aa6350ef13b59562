#include "agent/core/log_fields.hpp"

namespace quiesce::agent {

namespace {

LogFields& thread_fields() {
  thread_local LogFields fields;
  return fields;
}

}  // namespace

const LogFields& current_log_fields() { return thread_fields(); }

ScopedLogFields::ScopedLogFields(const LogFields& add) : saved_(thread_fields()) {
  auto& now = thread_fields();
  if (!add.session.empty()) {
    now.session = add.session;
  }
  if (!add.writer.empty()) {
    now.writer = add.writer;
  }
  if (!add.phase.empty()) {
    now.phase = add.phase;
  }
}

ScopedLogFields::ScopedLogFields(const LogFields& fields, Exactly) : saved_(thread_fields()) {
  thread_fields() = fields;
}

ScopedLogFields::~ScopedLogFields() { thread_fields() = saved_; }

}  // namespace quiesce::agent
