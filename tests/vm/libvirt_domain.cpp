#include "tests/vm/libvirt_domain.hpp"

namespace quiesce::test {

namespace {

std::string xml_escape(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '\'': out += "&apos;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string xml_escape(const std::filesystem::path& path) { return xml_escape(path.string()); }

}  // namespace

std::string libvirt_domain_xml(const LibvirtDomainSpec& spec) {
  std::string xml;
  xml += "<domain type='qemu'>\n";
  xml += "  <name>" + xml_escape(spec.name) + "</name>\n";
  xml += "  <memory unit='MiB'>" + std::to_string(spec.memory_mib) + "</memory>\n";
  xml += "  <vcpu>" + std::to_string(spec.cpus) + "</vcpu>\n";
  xml += "  <os>\n";
  xml += "    <type arch='x86_64' machine='pc'>hvm</type>\n";
  xml += "    <kernel>" + xml_escape(spec.kernel) + "</kernel>\n";
  xml += "    <initrd>" + xml_escape(spec.initrd) + "</initrd>\n";
  xml += "    <cmdline>" + xml_escape(spec.cmdline) + "</cmdline>\n";
  xml += "  </os>\n";
  // A guest that stops for any reason stays stopped: the test sees it gone
  // instead of a reboot loop.
  xml += "  <on_poweroff>destroy</on_poweroff>\n";
  xml += "  <on_reboot>destroy</on_reboot>\n";
  xml += "  <on_crash>destroy</on_crash>\n";
  xml += "  <devices>\n";
  xml += "    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n";
  // cache='writeback' as QEMU's default: the guest's flushes reach the
  // image, which is what a quiesced snapshot relies on.
  xml += "    <disk type='file' device='disk'>\n";
  xml += "      <driver name='qemu' type='qcow2' cache='writeback'/>\n";
  xml += "      <source file='" + xml_escape(spec.data_disk) + "'/>\n";
  xml += "      <target dev='" + xml_escape(spec.data_disk_target) + "' bus='virtio'/>\n";
  xml += "      <serial>" + xml_escape(spec.data_disk_serial) + "</serial>\n";
  xml += "    </disk>\n";
  xml += "    <serial type='file'>\n";
  xml += "      <source path='" + xml_escape(spec.console_log) + "'/>\n";
  xml += "      <target port='0'/>\n";
  xml += "    </serial>\n";
  xml += "    <channel type='unix'>\n";
  xml += "      <target type='virtio' name='org.qemu.guest_agent.0'/>\n";
  xml += "    </channel>\n";
  xml += "    <channel type='unix'>\n";
  xml += "      <source mode='bind' path='" + xml_escape(spec.control_socket) + "'/>\n";
  xml += "      <target type='virtio' name='org.quiesce.test.0'/>\n";
  xml += "    </channel>\n";
  // No balloon, USB, video or network: each costs boot time under TCG and
  // the tests use none.
  xml += "    <memballoon model='none'/>\n";
  xml += "    <controller type='usb' model='none'/>\n";
  xml += "  </devices>\n";
  xml += "</domain>\n";
  return xml;
}

}  // namespace quiesce::test
