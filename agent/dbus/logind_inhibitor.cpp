#include "agent/dbus/logind_inhibitor.hpp"

namespace quiesce::agent::dbus {

InhibitorState::Action InhibitorState::hold_started() {
  holding_ = true;
  if (held_ || pending_) {
    return Action::none;
  }
  pending_ = true;
  return Action::request;
}

InhibitorState::Action InhibitorState::hold_ended() {
  holding_ = false;
  if (held_) {
    held_ = false;
    return Action::release;
  }
  return Action::none;
}

InhibitorState::Action InhibitorState::granted() {
  pending_ = false;
  if (!holding_) {
    return Action::release;  // the thaw came first
  }
  held_ = true;
  return Action::none;
}

void InhibitorState::refused() { pending_ = false; }

}  // namespace quiesce::agent::dbus
