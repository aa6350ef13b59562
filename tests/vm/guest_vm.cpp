#include "tests/vm/guest_vm.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <deque>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace quiesce::test {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The runner's escaping of its output onto one line: "\\" and "\n".
std::string unescape_output(const std::string& in) {
  std::string out;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '\\' && i + 1 < in.size()) {
      ++i;
      out += in[i] == 'n' ? '\n' : in[i];
    } else {
      out += in[i];
    }
  }
  return out;
}

// The last non-empty line of a command's output (the scripts print their
// result there, progress above it).
std::string last_line(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  std::string last;
  while (std::getline(in, line)) {
    if (!line.empty()) {
      last = line;
    }
  }
  return last;
}

}  // namespace

GuestVm::GuestVm(const Options& options) {
  const std::filesystem::path source = QUIESCE_SOURCE_DIR;
  const auto image_started = Clock::now();
  std::string output;
  if (run_command({(source / "tests/vm/build-debian-image.sh").string()}, &output) != 0) {
    throw std::runtime_error("tests/vm/build-debian-image.sh failed:\n" + output);
  }
  image_dir_ = last_line(output);
  if (output.find("building") != std::string::npos) {
    image_seconds_ = seconds_since(image_started);
  }
  output.clear();
  const auto payload = run_dir_ / "payload.img";
  if (run_command({(source / "tests/vm/make-payload.sh").string(), options.build_dir.string(), payload.string()},
                  &output) != 0) {
    throw std::runtime_error("tests/vm/make-payload.sh failed:\n" + output);
  }
  const auto overlay = run_dir_ / "overlay.qcow2";
  output.clear();
  if (run_command({"qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                   (image_dir_ / "base.qcow2").string(), overlay.string()},
                  &output) != 0) {
    throw std::runtime_error("qemu-img create failed:\n" + output);
  }

  console_log_ = run_dir_ / "console.log";
  control_socket_ = run_dir_ / "control.sock";
  const auto boot_started = Clock::now();
  qemu_.emplace(
      std::vector<std::string>{
          "/usr/bin/qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", std::to_string(options.memory_mib),
          "-smp", std::to_string(options.cpus), "-nodefaults", "-display", "none", "-no-reboot",
          "-kernel", (image_dir_ / "vmlinuz").string(), "-initrd", (image_dir_ / "initrd.img").string(),
          "-append",
          // Drivers for emulated hardware the tests never use only cost boot time under TCG.
          "root=/dev/vda rw console=ttyS0 panic=-1 mitigations=off "
          "modprobe.blacklist=floppy,pcspkr,kvm,kvm_amd,kvm_intel,ata_piix,ata_generic,pata_acpi,"
          "i2c_piix4,powernow_k8,edac_mce_amd,serio_raw,joydev",
          "-drive", "file=" + overlay.string() + ",if=virtio,format=qcow2,cache=writeback",
          "-drive", "file=" + payload.string() + ",if=virtio,format=raw,readonly=on",
          "-serial", "file:" + console_log_.string(),
          "-device", "virtio-serial-pci",
          "-chardev", "socket,id=control,path=" + control_socket_.string() + ",server=on,wait=off",
          "-device", "virtserialport,chardev=control,name=org.quiesce.test.0"},
      run_dir_ / "qemu.log");

  const auto deadline = Clock::now() + options.boot_timeout;
  try {
    connect_control(deadline);
    // The runner greets when it opens the port; requests sent before that
    // may be lost, so ask again until one is answered.
    for (;;) {
      if (!qemu_->running()) {
        throw std::runtime_error("QEMU exited during boot");
      }
      const auto id = next_id_++;
      send_line(std::to_string(id) + " 10 echo ready");
      const auto until = std::min(deadline, Clock::now() + std::chrono::seconds(3));
      bool ready = false;
      while (auto line = read_line(until)) {
        if (line->rfind("R " + std::to_string(id) + " ", 0) == 0) {
          ready = true;
          break;
        }
      }
      if (ready) {
        break;
      }
      if (Clock::now() >= deadline) {
        throw std::runtime_error("the guest runner did not answer within the boot timeout");
      }
    }
  } catch (const std::exception& e) {
    const std::string message = std::string(e.what()) + "; console (" + console_log_.string() + "):\n" +
                                console_tail();
    note_test_failed();  // keep the run dir with the console log
    shut_down();
    throw std::runtime_error(message);
  }
  boot_seconds_ = seconds_since(boot_started);
}

GuestVm::~GuestVm() { shut_down(); }

void GuestVm::shut_down() {
  if (control_fd_ >= 0) {
    ::close(control_fd_);
    control_fd_ = -1;
  }
  if (qemu_) {
    // Nothing in the guest needs a clean shutdown: the overlay is thrown
    // away. SIGTERM lets QEMU close its files; SIGKILL if it does not go.
    qemu_->signal(SIGTERM);
    if (!qemu_->wait_for(std::chrono::seconds(5))) {
      qemu_->signal(SIGKILL);
      (void)qemu_->wait_for(std::chrono::seconds(5));
    }
    qemu_.reset();
  }
}

void GuestVm::connect_control(Clock::time_point deadline) {
  for (;;) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
    }
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, control_socket_.c_str(), sizeof address.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
      control_fd_ = fd;
      return;
    }
    ::close(fd);
    if (Clock::now() >= deadline || !qemu_->running()) {
      throw std::runtime_error("cannot connect to QEMU's control socket " + control_socket_.string());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void GuestVm::send_line(const std::string& line) {
  const std::string data = line + "\n";
  std::size_t sent = 0;
  while (sent < data.size()) {
    const auto n = ::send(control_fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      throw std::runtime_error(std::string("control channel: send: ") + std::strerror(errno));
    }
    sent += static_cast<std::size_t>(n);
  }
}

std::optional<std::string> GuestVm::read_line(Clock::time_point deadline) {
  for (;;) {
    if (const auto newline = pending_.find('\n'); newline != std::string::npos) {
      std::string line = pending_.substr(0, newline);
      pending_.erase(0, newline + 1);
      if (!line.empty() && line.back() == '\r') {
        line.pop_back();
      }
      return line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      return std::nullopt;
    }
    pollfd p{control_fd_, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (ready < 0 && errno != EINTR) {
      throw std::runtime_error(std::string("control channel: poll: ") + std::strerror(errno));
    }
    if (ready <= 0) {
      continue;
    }
    std::array<char, 65536> buffer{};
    const auto n = ::recv(control_fd_, buffer.data(), buffer.size(), 0);
    if (n == 0) {
      throw std::runtime_error("control channel: QEMU closed the socket");
    }
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      throw std::runtime_error(std::string("control channel: recv: ") + std::strerror(errno));
    }
    pending_.append(buffer.data(), static_cast<std::size_t>(n));
  }
}

GuestResult GuestVm::run(const std::string& command, std::chrono::seconds limit) {
  if (command.find('\n') != std::string::npos) {
    throw std::invalid_argument("GuestVm::run: one line only");
  }
  const auto id = std::to_string(next_id_++);
  send_line(id + " " + std::to_string(limit.count()) + " " + command);
  // The runner's own timeout, its kill grace, and the channel's latency.
  const auto deadline = Clock::now() + limit + std::chrono::seconds(10);
  const std::string prefix = "R " + id + " ";
  while (auto line = read_line(deadline)) {
    if (line->rfind(prefix, 0) != 0) {
      continue;  // a greeting, or the answer to a request we gave up on
    }
    std::istringstream fields(line->substr(prefix.size()));
    GuestResult result;
    fields >> result.exit_code >> result.started >> result.ended;
    std::string rest;
    std::getline(fields, rest);
    result.output = unescape_output(rest.empty() ? rest : rest.substr(1));
    return result;
  }
  throw std::runtime_error("the guest runner gave no answer to '" + command + "' within " +
                           std::to_string(limit.count()) + " s + 10 s");
}

double GuestVm::guest_now() { return run("true").ended; }

std::string GuestVm::console_tail(std::size_t lines) const {
  std::ifstream in(console_log_);
  std::deque<std::string> tail;
  std::string line;
  while (std::getline(in, line)) {
    tail.push_back(line);
    if (tail.size() > lines) {
      tail.pop_front();
    }
  }
  std::string out;
  for (const auto& l : tail) {
    out += l + "\n";
  }
  return out;
}

}  // namespace quiesce::test
