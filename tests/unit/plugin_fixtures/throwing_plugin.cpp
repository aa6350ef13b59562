// An SDK plugin that throws: every exception must come back as an error code
// and a message, never as a crash in the host.
#include <stdexcept>

#include "quiesce/plugin_sdk.hpp"

namespace {

namespace qp = quiesce::plugin;

class ThrowingWriter {
 public:
  explicit ThrowingWriter(const qp::InitInput& init) {
    if (init.options().value("throw_in_create", false)) {
      throw std::invalid_argument("options.throw_in_create: asked to fail");
    }
  }
  qp::Result identify(const qp::Context&, qp::Identity&) { return qp::Result::ok(); }
  qp::Result prepare(const qp::Context&) { throw qp::Error(qp::Code::retryable, "busy, try later"); }
  qp::Result freeze(const qp::Context&) { throw std::runtime_error("boom in freeze"); }
  qp::Result thaw(const qp::Context&, qp::HoldReport& hold) {
    hold.continuous = false;
    hold.detail = "lost it";
    throw 42;  // not even a std::exception
  }
  qp::Result abort(const qp::Context&) { return qp::Result::inconsistent("cannot vouch"); }
};

}  // namespace

QUIESCE_PLUGIN(ThrowingWriter, "throwing", quiesce::plugin::Level::database, "throws everywhere")
