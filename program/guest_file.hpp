// SPDX-License-Identifier: MIT
// program/guest_file.hpp: --guest FILE, a raw arm64 image of the user's own,
// read and checked before any VM exists.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <expected>
#include <string>
#include <vector>

#include "kvm_hello.hpp"
#include "program/format.hpp"
#include "program/inspect.hpp"
#include "program/messages.hpp"

namespace kh = kvm_hello;

struct GuestFileError {
  Status status;
  std::string message;
};

// Reads a whole file of at most `limit` bytes: a guest image or its line table.
inline std::expected<std::vector<std::uint8_t>, GuestFileError> read_small_file(const std::string& path,
                                                                                std::uint64_t limit) {
  const kh::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat info {};
  if (fd.get() < 0 || ::fstat(fd.get(), &info) != 0) {
    return std::unexpected(GuestFileError{Status::guest_file, "cannot open it: " + errno_text(errno)});
  }
  if (S_ISDIR(info.st_mode)) return std::unexpected(GuestFileError{Status::guest_file, "it is a directory"});
  if (static_cast<std::uint64_t>(info.st_size) > limit) {
    return std::unexpected(GuestFileError{
        Status::bad_guest_image,
        "it is " + std::to_string(info.st_size) + " bytes, more than guest RAM (" + std::to_string(limit) + " bytes)"});
  }
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(info.st_size));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t got = ::read(fd.get(), bytes.data() + done, bytes.size() - done);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return std::unexpected(GuestFileError{Status::guest_file, "cannot read it: " + errno_text(errno)});
    if (got == 0) break;
    done += static_cast<std::size_t>(got);
  }
  bytes.resize(done);
  return bytes;
}

// Reads a raw guest image, and checks it fits guest RAM: all before any VM exists.
inline std::expected<std::vector<std::uint8_t>, GuestFileError> load_guest_file(const std::string& path) {
  auto image = read_small_file(path, kh::ram_size);
  if (image && !kh::check_guest_image(*image)) {
    return std::unexpected(
        GuestFileError{Status::bad_guest_image, "it is empty: a guest needs at least one instruction"});
  }
  return image;
}

// Reads a guest's line table (--guest-lines FILE, made by program/guest-lines.sh).
// A line table is text of about 80 bytes an instruction: never more than guest RAM's worth.
inline std::expected<GuestSource, GuestFileError> load_guest_source(const std::string& path) {
  const auto text = read_small_file(path, 32 * kh::ram_size);
  if (!text) return std::unexpected(text.error());
  return parse_guest_source(std::string_view(reinterpret_cast<const char*>(text->data()), text->size()));
}
