/*
 * The marker file's OS part, one implementation per OS chosen by
 * CMakeLists.txt (marker_file_posix.c, marker_file_windows.c), so the
 * plugin itself (touch_file_plugin.c) is the same C on both.
 */
#ifndef QUIESCE_TOUCH_FILE_MARKER_FILE_H
#define QUIESCE_TOUCH_FILE_MARKER_FILE_H

#include <stddef.h>
#include <stdint.h>

/* 1 when `path` is absolute for this OS ("/..." on POSIX; "C:/..." or
 * "C:\..." on Windows), else 0. */
int marker_path_is_absolute(const char* path);

/* Replaces the file at `path` with `content` durably: a temp file beside
 * it, flushed to disk, then renamed over it. Returns a QUIESCE_PLUGIN_*
 * code; on failure `error` says which file and why. */
int32_t marker_file_replace(const char* path, const char* content, char* error,
                            size_t error_size);

#endif
