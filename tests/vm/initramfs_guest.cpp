#include "tests/vm/initramfs_guest.hpp"

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace quiesce::test {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string agent_name(GuestAgent agent) {
  switch (agent) {
    case GuestAgent::quiesce:
      return "quiesce";
    case GuestAgent::qemu_ga:
      return "qemu-ga";
    case GuestAgent::none:
      return "none";
  }
  return "none";
}

std::string read_first_line(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line)) {
    throw std::runtime_error("cannot read " + path.string());
  }
  return line;
}

}  // namespace

InitramfsBoot prepare_initramfs_boot(const InitramfsPayload& payload, const std::filesystem::path& out_dir) {
  const std::filesystem::path source = QUIESCE_SOURCE_DIR;
  InitramfsBoot boot;
  const auto image_started = Clock::now();
  std::string output;
  if (run_command({(source / "tests/vm/build-initramfs-guest.sh").string()}, &output) != 0) {
    throw std::runtime_error("tests/vm/build-initramfs-guest.sh failed:\n" + output);
  }
  boot.image_dir = last_line(output);
  if (output.find("building") != std::string::npos) {
    boot.image_seconds = seconds_since(image_started);
  }
  boot.kernel = boot.image_dir / "vmlinuz";
  boot.cmdline = read_first_line(boot.image_dir / "cmdline");
  boot.initrd = out_dir / "initrd.img";
  boot.payload = out_dir / "payload.cpio";

  std::vector<std::string> argv{(source / "tests/vm/make-initramfs-payload.sh").string(),
                                "--image", boot.image_dir.string(),
                                "--initrd", boot.initrd.string(),
                                "--payload", boot.payload.string(),
                                "--agent", agent_name(payload.agent)};
  if (!payload.build_dir.empty()) {
    argv.insert(argv.end(), {"--build-dir", payload.build_dir.string()});
  }
  if (!payload.agent_config.empty()) {
    const auto config = out_dir / "agent.json";
    std::ofstream(config) << payload.agent_config;
    argv.insert(argv.end(), {"--config", config.string()});
  }
  output.clear();
  if (run_command(argv, &output) != 0) {
    throw std::runtime_error("tests/vm/make-initramfs-payload.sh failed:\n" + output);
  }
  return boot;
}

void make_data_disk(const std::filesystem::path& qcow2, int size_mib) {
  auto raw = qcow2;
  raw.replace_extension(".raw");
  std::string output;
  std::filesystem::remove(raw);
  std::ofstream(raw).close();
  std::filesystem::resize_file(raw, static_cast<std::uintmax_t>(size_mib) << 20);
  if (run_command({"mkfs.ext4", "-q", "-F", "-L", "quiesce-data", raw.string()}, &output) != 0 ||
      run_command({"qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw.string(), qcow2.string()},
                  &output) != 0) {
    throw std::runtime_error("making the data disk failed:\n" + output);
  }
  std::filesystem::remove(raw);
}

InitramfsGuest::InitramfsGuest(const Options& options) {
  boot_ = prepare_initramfs_boot(options.payload, run_dir_.path());
  console_log_ = run_dir_ / "console.log";
  control_socket_ = run_dir_ / "control.sock";
  qga_socket_ = run_dir_ / "qga.sock";
  std::vector<std::string> argv{
      "/usr/bin/qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", std::to_string(options.memory_mib),
      "-smp", std::to_string(options.cpus), "-nodefaults", "-display", "none", "-no-reboot",
      "-kernel", boot_.kernel.string(), "-initrd", boot_.initrd.string(), "-append", boot_.cmdline,
      "-serial", "file:" + console_log_.string(),
      "-device", "virtio-serial-pci",
      "-chardev", "socket,id=control,path=" + control_socket_.string() + ",server=on,wait=off",
      "-device", "virtserialport,chardev=control,name=org.quiesce.test.0",
      "-chardev", "socket,id=qga,path=" + qga_socket_.string() + ",server=on,wait=off",
      "-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0"};
  if (options.data_disk_mib > 0) {
    const auto data = run_dir_ / "data.qcow2";
    make_data_disk(data, options.data_disk_mib);
    argv.insert(argv.end(), {"-drive", "file=" + data.string() + ",if=virtio,format=qcow2,cache=writeback"});
  }
  const auto boot_started = Clock::now();
  qemu_.emplace(argv, run_dir_ / "qemu.log");
  connect_booting_guest(control_, control_socket_, Clock::now() + options.boot_timeout, *qemu_, console_log_);
  boot_seconds_ = seconds_since(boot_started);
}

InitramfsGuest::~InitramfsGuest() { shut_down(); }

void InitramfsGuest::shut_down() {
  control_.close();
  if (qemu_) {
    stop_qemu(*qemu_);
    qemu_.reset();
  }
}

}  // namespace quiesce::test
