#include "tests/support/storage_layouts.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>

#include "tests/support/processes.hpp"

namespace quiesce::test {

namespace fs = std::filesystem;

namespace {

std::string trimmed(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
    text.pop_back();
  }
  return text;
}

void set_all(Layout& layout, const std::vector<std::string>& filesystems) {
  layout.data_dirs = filesystems;
  layout.frozen_dirs = filesystems;
  layout.thawed_dirs = filesystems;
}

// lower (ext4) <- mid (ext4, image on lower) <- upper (ext4, image on mid),
// mounted side by side so that mount paths say nothing of the order.
void two_deep(StorageStack& stack, bool bind_last) {
  const auto lower = (stack.dir() / "lower").string();
  const auto mid = (stack.dir() / "mid").string();
  const auto upper = (stack.dir() / "upper").string();
  stack.filesystem("ext4", stack.dir() / "lower.img", 384, lower);
  stack.filesystem("ext4", lower + "/mid.img", 160, mid);
  stack.filesystem("ext4", mid + "/upper.img", 64, upper);
  auto& layout = stack.layout();
  layout.mounts = {lower, mid, upper};
  set_all(layout, {lower, mid, upper});
  layout.lowest_first = {lower, mid, upper};
  layout.order = {{upper, mid}, {mid, lower}};
  if (bind_last) {
    // A mount of the lowest filesystem beneath the top one: by mount paths
    // it would freeze first, and deadlock the top one's freeze.
    const auto bind = upper + "/lower-bind";
    stack.mount({"--bind", lower}, bind);
    layout.mounts.push_back(bind);
    layout.order.emplace_back(upper, bind);
  }
}

}  // namespace

StorageStack::StorageStack(fs::path dir) : dir_(std::move(dir)) {}

StorageStack::~StorageStack() {
  // Thaw everything first: unmounting (or detaching) anything above a
  // frozen filesystem would block on it.
  for (const auto& mount_point : mounted_) {
    std::string ignored;
    run_command({"fsfreeze", "-u", mount_point}, &ignored);
  }
  for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) {
    (*it)();
  }
}

void StorageStack::run(const std::vector<std::string>& argv, std::string* output) {
  std::string text;
  if (run_command(argv, &text) != 0) {
    std::string command;
    for (const auto& arg : argv) {
      command += arg + " ";
    }
    throw std::runtime_error("failed: " + command + "\n" + text);
  }
  if (output != nullptr) {
    *output = trimmed(text);
  }
}

std::string StorageStack::loop(const fs::path& image, int size_mb) {
  run({"truncate", "-s", std::to_string(size_mb) + "M", image.string()});
  undo_.emplace_back([image] {
    std::error_code ec;
    fs::remove(image, ec);
  });
  std::string device;
  run({"losetup", "-f", "--show", image.string()}, &device);
  undo_.emplace_back([device] {
    std::string ignored;
    run_command({"losetup", "-d", device}, &ignored);
  });
  return device;
}

void StorageStack::mount(std::vector<std::string> args, const std::string& mount_point) {
  fs::create_directories(mount_point);
  args.insert(args.begin(), "mount");
  args.push_back(mount_point);
  run(args);
  mounted_.push_back(mount_point);
  undo_.emplace_back([mount_point] {
    std::string ignored;
    if (run_command({"umount", mount_point}, &ignored) != 0) {
      run_command({"umount", "-l", mount_point}, &ignored);
    }
  });
}

std::string StorageStack::filesystem(const std::string& fstype, const fs::path& image, int size_mb,
                                     const std::string& mount_point) {
  auto device = loop(image, size_mb);
  mkfs(fstype, device);
  mount({device}, mount_point);
  return device;
}

void StorageStack::mkfs(const std::string& fstype, const std::string& device) {
  run(mkfs_command(fstype, device));
}

std::string StorageStack::dm_linear(const std::string& name, const std::string& device) {
  std::string sectors;
  run({"blockdev", "--getsz", device}, &sectors);
  run({"dmsetup", "create", name, "--table", "0 " + sectors + " linear " + device + " 0"});
  undo_.emplace_back([name] {
    std::string ignored;
    run_command({"dmsetup", "remove", "--retry", name}, &ignored);
  });
  run({"udevadm", "settle"});
  return "/dev/mapper/" + name;
}

void StorageStack::freeze_by_someone_else(const std::string& mount_point) {
  run({"fsfreeze", "-f", mount_point});
  undo_.emplace_back([mount_point] {
    std::string ignored;
    run_command({"fsfreeze", "-u", mount_point}, &ignored);
  });
}

std::vector<std::string> mkfs_command(const std::string& fstype, const std::string& device) {
  if (fstype == "ext4") {
    return {"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", device};
  }
  if (fstype == "xfs") {
    return {"mkfs.xfs", "-q", "-f", device};
  }
  return {"mkfs.btrfs", "-q", "-f", device};
}

std::vector<std::string> layout_names() {
  return {"two-deep",    "two-deep-bind-last", "dm-over-loop",   "btrfs-subvolumes",
          "xfs-on-ext4", "overlay-upper",      "frozen-by-other"};
}

std::unique_ptr<StorageStack> build_layout(const std::string& name, const fs::path& dir) {
  auto stack = std::make_unique<StorageStack>(dir);
  auto& layout = stack->layout();
  layout.name = name;
  const auto at = [&](const char* leaf) { return (dir / leaf).string(); };
  if (name == "two-deep" || name == "two-deep-bind-last") {
    two_deep(*stack, name == "two-deep-bind-last");
  } else if (name == "frozen-by-other") {
    two_deep(*stack, false);
    // Someone else froze the top: the freeze must refuse (EBUSY), roll
    // back, and leave it frozen. No data goes there: it would block.
    stack->freeze_by_someone_else(at("upper"));
    layout.expect_busy = true;
    layout.data_dirs = {at("lower"), at("mid")};
    layout.frozen_dirs = {at("upper")};
    layout.thawed_dirs = {at("lower"), at("mid")};
  } else if (name == "dm-over-loop") {
    stack->filesystem("ext4", dir / "lower.img", 192, at("lower"));
    auto loop = stack->loop(at("lower") + "/dm.img", 96);
    auto device = stack->dm_linear("quiesce-test-" + std::to_string(::getpid()), loop);
    stack->mkfs("ext4", device);
    stack->mount({device}, at("dm"));
    layout.mounts = {at("lower"), at("dm")};
    set_all(layout, layout.mounts);
    layout.lowest_first = layout.mounts;
    layout.order = {{at("dm"), at("lower")}};
  } else if (name == "btrfs-subvolumes") {
    stack->filesystem("ext4", dir / "lower.img", 384, at("lower"));
    auto device = stack->filesystem("btrfs", at("lower") + "/pool.img", 256, at("pool"));
    for (const char* subvolume : {"@a", "@b"}) {
      std::string ignored;
      if (run_command({"btrfs", "-q", "subvolume", "create", at("pool") + "/" + subvolume},
                      &ignored) != 0) {
        throw std::runtime_error("btrfs subvolume create failed: " + ignored);
      }
    }
    stack->mount({"-o", "subvol=@a", device}, at("sub-a"));
    stack->mount({"-o", "subvol=@b", device}, at("sub-b"));
    stack->filesystem("ext4", at("sub-b") + "/inner.img", 64, at("inner"));
    layout.mounts = {at("lower"), at("pool"), at("sub-a"), at("sub-b"), at("inner")};
    set_all(layout, layout.mounts);
    layout.lowest_first = {at("lower"), at("pool"), at("inner")};
    layout.order = {{at("inner"), at("sub-b")}, {at("pool"), at("lower")}};
  } else if (name == "xfs-on-ext4") {
    stack->filesystem("ext4", dir / "lower.img", 384, at("lower"));
    stack->filesystem("xfs", at("lower") + "/xfs.img", 300, at("xfs"));
    layout.mounts = {at("lower"), at("xfs")};
    set_all(layout, layout.mounts);
    layout.lowest_first = layout.mounts;
    layout.order = {{at("xfs"), at("lower")}};
  } else if (name == "overlay-upper") {
    stack->filesystem("ext4", dir / "lower.img", 192, at("lower"));
    fs::create_directories(at("ovl-lower"));
    fs::create_directories(at("lower") + "/upper");
    fs::create_directories(at("lower") + "/work");
    stack->mount({"-t", "overlay", "overlay", "-o",
                  "lowerdir=" + at("ovl-lower") + ",upperdir=" + at("lower") +
                      "/upper,workdir=" + at("lower") + "/work"},
                 at("merged"));
    // An image written through the overlay lands in its upper directory.
    stack->filesystem("ext4", at("merged") + "/inner.img", 64, at("inner"));
    // The overlay listed selects the filesystem holding its upper dir.
    layout.mounts = {at("merged"), at("inner"), at("lower")};
    set_all(layout, {at("merged"), at("inner"), at("lower")});
    layout.lowest_first = {at("lower"), at("inner")};
    layout.order = {{at("inner"), at("lower")}};
  } else {
    throw std::runtime_error("no layout named '" + name + "'");
  }
  return stack;
}

ThawWatchdog::ThawWatchdog(std::vector<std::string> lowest_first)
    : mounts_(std::move(lowest_first)) {
  thread_ = std::thread([this] { run(); });
}

ThawWatchdog::~ThawWatchdog() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void ThawWatchdog::arm(std::chrono::steady_clock::duration timeout) {
  std::lock_guard lock(mutex_);
  deadline_ = std::chrono::steady_clock::now() + timeout;
  fired_ = false;
  wake_.notify_all();
}

bool ThawWatchdog::disarm() {
  std::lock_guard lock(mutex_);
  deadline_.reset();
  return fired_;
}

void ThawWatchdog::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    if (!deadline_) {
      wake_.wait(lock);
      continue;
    }
    if (wake_.wait_until(lock, *deadline_) == std::cv_status::timeout && deadline_ &&
        std::chrono::steady_clock::now() >= *deadline_) {
      deadline_.reset();
      fired_ = true;
      lock.unlock();
      for (const auto& mount : mounts_) {
        std::string ignored;
        run_command({"fsfreeze", "-u", mount}, &ignored);
      }
      lock.lock();
    }
  }
}

std::string write_unsynced(const std::string& path, std::size_t bytes, int seed) {
  std::string data(bytes, '\0');
  for (std::size_t i = 0; i < bytes; ++i) {
    data[i] = static_cast<char>('a' + (i * 31 + static_cast<std::size_t>(seed)) % 26);
  }
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    throw std::runtime_error("cannot create " + path);
  }
  std::size_t done = 0;
  while (done < bytes) {
    auto n = ::write(fd, data.data() + done, bytes - done);
    if (n <= 0) {
      ::close(fd);
      throw std::runtime_error("cannot write " + path);
    }
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return data;
}

bool has_content(const std::string& path, const std::string& expected) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return false;
  }
  std::string data(expected.size() + 1, '\0');
  std::size_t done = 0;
  ssize_t n = 0;
  while (done < data.size() && (n = ::read(fd, data.data() + done, data.size() - done)) > 0) {
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  data.resize(done);
  return data == expected;
}

bool device_mapper_available() {
  std::string ignored;
  return run_command({"dmsetup", "version"}, &ignored) == 0;
}

}  // namespace quiesce::test
