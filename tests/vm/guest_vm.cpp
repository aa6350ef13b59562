#include "tests/vm/guest_vm.hpp"

#include <stdexcept>

namespace quiesce::test {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

GuestVm::GuestVm(const Options& options) : options_(options) {
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
  payload_ = run_dir_ / "payload.img";
  if (run_command({(source / "tests/vm/make-payload.sh").string(), options.build_dir.string(), payload_.string()},
                  &output) != 0) {
    throw std::runtime_error("tests/vm/make-payload.sh failed:\n" + output);
  }
  overlay_ = run_dir_ / "overlay.qcow2";
  output.clear();
  if (run_command({"qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                   (image_dir_ / "base.qcow2").string(), overlay_.string()},
                  &output) != 0) {
    throw std::runtime_error("qemu-img create failed:\n" + output);
  }
  control_socket_ = run_dir_ / "control.sock";
  const auto boot_started = Clock::now();
  boot(options.boot_timeout);
  boot_seconds_ = seconds_since(boot_started);
}

double GuestVm::power_cycle(std::chrono::seconds boot_timeout) {
  shut_down();
  const auto boot_started = Clock::now();
  boot(boot_timeout);
  return seconds_since(boot_started);
}

void GuestVm::boot(std::chrono::seconds timeout) {
  ++boots_;
  // A console log per boot: the file chardev truncates what it opens.
  const std::string suffix = boots_ == 1 ? "" : "-boot" + std::to_string(boots_);
  console_log_ = run_dir_ / ("console" + suffix + ".log");
  qemu_.emplace(
      std::vector<std::string>{
          "/usr/bin/qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", std::to_string(options_.memory_mib),
          "-smp", std::to_string(options_.cpus), "-nodefaults", "-display", "none", "-no-reboot",
          "-kernel", (image_dir_ / "vmlinuz").string(), "-initrd", (image_dir_ / "initrd.img").string(),
          "-append",
          // Drivers for emulated hardware the tests never use only cost boot time under TCG.
          "root=/dev/vda rw console=ttyS0 panic=-1 mitigations=off "
          "modprobe.blacklist=floppy,pcspkr,kvm,kvm_amd,kvm_intel,ata_piix,ata_generic,pata_acpi,"
          "i2c_piix4,powernow_k8,edac_mce_amd,serio_raw,joydev",
          "-drive", "file=" + overlay_.string() + ",if=virtio,format=qcow2,cache=writeback",
          "-drive", "file=" + payload_.string() + ",if=virtio,format=raw,readonly=on",
          "-serial", "file:" + console_log_.string(),
          "-device", "virtio-serial-pci",
          "-chardev", "socket,id=control,path=" + control_socket_.string() + ",server=on,wait=off",
          "-device", "virtserialport,chardev=control,name=org.quiesce.test.0"},
      run_dir_ / ("qemu" + suffix + ".log"));

  connect_booting_guest(control_, control_socket_, Clock::now() + timeout, *qemu_, console_log_);
}

GuestVm::~GuestVm() { shut_down(); }

void GuestVm::shut_down() {
  control_.close();
  if (qemu_) {
    stop_qemu(*qemu_);
    qemu_.reset();
  }
}

}  // namespace quiesce::test
