#pragma once
// When the agent must hold a logind "delay" inhibitor for sleep and shutdown
// (docs/dbus.md): from the start of a hold until its end, so a suspend or a
// shutdown waits for the thaw instead of stalling on a frozen disk.
//
// The Inhibit call is asynchronous (the bus thread never waits on logind), so
// a hold may end before logind answers: the descriptor that arrives then is
// closed at once. This class only decides; the D-Bus service makes the calls.

#include <optional>

namespace quiesce::agent::dbus {

class InhibitorState {
 public:
  enum class Action {
    none,
    request,  // call org.freedesktop.login1.Manager.Inhibit
    release,  // close the descriptor held
  };

  // A hold began: ask for an inhibitor unless one is held or on its way.
  Action hold_started();
  // The hold ended: release what is held; one still on its way is released
  // when it arrives.
  Action hold_ended();
  // logind answered with a descriptor: keep it while the hold lasts.
  Action granted();
  // logind is absent or refused: nothing is held; the next hold asks again.
  void refused();

  [[nodiscard]] bool held() const { return held_; }
  [[nodiscard]] bool pending() const { return pending_; }

 private:
  bool holding_ = false;  // a hold is on
  bool pending_ = false;  // an Inhibit call is on its way
  bool held_ = false;     // a descriptor is held
};

}  // namespace quiesce::agent::dbus
