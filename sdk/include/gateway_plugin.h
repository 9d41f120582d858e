/*
 * gateway_plugin.h -- the gateway's plugin ABI, version 1.1, for plugins written in C.
 *
 * This header describes exactly the layout of `sdk/src/abi.rs`. Neither is generated from
 * the other; `sdk/tests/c_header.rs` compiles C files that check every offset, size and
 * constant below against the Rust definitions, so they cannot drift apart. Plugins written
 * in Rust should use the `gateway-sdk` crate and `declare_plugin!` instead.
 *
 * THE PROMISE
 * -----------
 *  - Entry point. A plugin is a shared library that exports one symbol,
 *        const gw_plugin_descriptor *gw_plugin_entry_v1(void);
 *    returning a descriptor that stays valid (static) for the life of the library. The
 *    major version is part of the symbol's name: a host never calls a plugin of another
 *    major version by mistake, and a library exporting `gw_plugin_entry_v2` is refused by a
 *    1.x host with a message naming major 2.
 *  - Appending only. Every structure the two sides exchange by pointer starts with
 *    `size_t struct_size`, set by whoever fills it to `sizeof` of the structure as that side
 *    knows it. Within one major version, fields are only ever appended at the end, and each
 *    addition bumps GW_ABI_MINOR. A reader copies min(struct_size, its own sizeof) bytes
 *    into a zeroed structure, so fields the other side does not know read as zero / NULL.
 *    Consequences: a 1.0 plugin runs unchanged on a 1.1 host; a 1.1 plugin on a 1.0 host
 *    simply has its 1.1 entries ignored. Nothing is ever removed, reordered or resized.
 *  - Emulation. Optional entries a plugin leaves NULL (or that its older table does not
 *    have) are emulated by the host: `zero` by writing zero buffers (and a flush for FUA),
 *    FUA writes by a write then `flush` when GW_CAP_NATIVE_FUA is not reported, `extents` by
 *    describing every range as allocated data, `cache` as a successful no-op, and `trim` as
 *    a successful no-op. A capability bit without the entry that implements it is ignored.
 *    Required backend entries: open, size, capabilities, read, write, flush (and close,
 *    unless open allocates nothing).
 *  - Threading. Every backend-table entry (backends and filters, and the `next` layer the
 *    host hands a filter) may be called from any thread, many calls at once, on the same
 *    instance: serialise internally where you must. `size` and `capabilities` are called
 *    once, right after `open`, and must not change afterwards. If calls may block on I/O,
 *    report GW_CAP_BLOCKING: the host then runs them on a blocking thread pool (bounded by
 *    the export's `plugin_call_timeout_ms`); otherwise they run inline on its event loop
 *    and must be quick. Backup components: `submit` is called in sequence order and never
 *    concurrently for one volume; completions may fire from any thread. Recovery policies:
 *    `on_event` calls on one instance are serialised by the host.
 *  - Buffers and strings. Every pointer argument (buffers, gw_str strings, gw_error, the
 *    host table, gw_update and its data) is owned by the caller and valid for the duration
 *    of the call only: copy what you keep. The one exception is the `next` handle passed to
 *    a filter's `open`, valid until the filter instance is closed. Strings are UTF-8,
 *    pointer and length, not NUL-terminated -- except the descriptor's `name` and `version`,
 *    which are static NUL-terminated C strings.
 *  - Errors. Entries return GW_OK (0) or a positive errno value (Linux numbering: EIO,
 *    ENOSPC, EPERM, EINVAL, ENOTSUP, ...) and may describe the failure in the caller's
 *    gw_error (`gw_error_set` below). GW_EPANIC (-1) means "this instance is broken": the
 *    host marks it failed and calls it no more. Nothing may unwind (C++ exceptions,
 *    longjmp) across the ABI.
 *  - Lifetime. The host never unloads a library. `close` is called exactly once per
 *    successful `open`.
 *
 * HISTORY
 * -------
 *  1.0  descriptor; backend table open..trim; capability bits CAN_TRIM, NATIVE_FUA,
 *       CAN_MULTI_CONN, BLOCKING; flags FUA, MAY_TRIM; backup component table; recovery
 *       policy table; host table with `log`.  (Frozen copy: sdk/abi/v1.0/gateway_plugin.h.)
 *  1.1  backend table appends zero, extents, cache; capability bits append CAN_ZERO,
 *       CAN_FAST_ZERO, CAN_EXTENTS, CAN_CACHE; flag FAST_ONLY; gw_extent and its flags.
 */
#ifndef GATEWAY_PLUGIN_H
#define GATEWAY_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GW_ABI_MAJOR 1
#define GW_ABI_MINOR 1
/* Name of the entry point for GW_ABI_MAJOR, and the prefix of every major's entry point. */
#define GW_ENTRY_SYMBOL "gw_plugin_entry_v1"
#define GW_ENTRY_PREFIX "gw_plugin_entry_v"

/* Plugin kinds (gw_plugin_descriptor.kind). */
#define GW_KIND_BACKEND 1u
#define GW_KIND_FILTER 2u
#define GW_KIND_BACKUP_COMPONENT 3u
#define GW_KIND_RECOVERY_POLICY 4u

/* Return codes: GW_OK, a positive errno value, or GW_EPANIC. */
#define GW_OK 0
#define GW_EPANIC (-1)

/* Capability bits, returned by a backend table's `capabilities` (ABI 1.0). */
#define GW_CAP_CAN_TRIM ((uint64_t)1 << 0)
#define GW_CAP_NATIVE_FUA ((uint64_t)1 << 1)
#define GW_CAP_CAN_MULTI_CONN ((uint64_t)1 << 2)
#define GW_CAP_BLOCKING ((uint64_t)1 << 3)
/* Capability bits (ABI 1.1). */
#define GW_CAP_CAN_ZERO ((uint64_t)1 << 4)
#define GW_CAP_CAN_FAST_ZERO ((uint64_t)1 << 5)
#define GW_CAP_CAN_EXTENTS ((uint64_t)1 << 6)
#define GW_CAP_CAN_CACHE ((uint64_t)1 << 7)

/* Request flags for write, trim and zero, and gw_update.flags. */
#define GW_FLAG_FUA ((uint32_t)1 << 0)
#define GW_FLAG_MAY_TRIM ((uint32_t)1 << 1)
#define GW_FLAG_FAST_ONLY ((uint32_t)1 << 2) /* ABI 1.1 */

/* Extent flags (ABI 1.1). */
#define GW_EXTENT_HOLE ((uint32_t)1 << 0)
#define GW_EXTENT_ZERO ((uint32_t)1 << 1)

/* Update kinds for backup components (gw_update.kind). */
#define GW_UPDATE_WRITE 1u
#define GW_UPDATE_TRIM 2u
#define GW_UPDATE_ZERO 3u

/* Opaque plugin instance, as returned by `open`. */
typedef void *gw_instance;

/* A borrowed UTF-8 string: pointer and length, not NUL-terminated. Passed by value. */
typedef struct gw_str {
    const uint8_t *ptr;
    size_t len;
} gw_str;

/* Error message buffer the caller provides; the callee fills it on failure. */
typedef struct gw_error {
    size_t struct_size;
    uint32_t len;
    uint8_t msg[500];
} gw_error;

/* What the host offers every plugin (passed to `open`; copy it if you keep it). */
typedef void (*gw_log_fn)(uint32_t level, gw_str plugin, gw_str message);
typedef struct gw_host_api {
    size_t struct_size;
    uint32_t abi_major;
    uint32_t abi_minor;
    /* Log a line under the plugin's name. Levels: 1 error, 2 warn, 3 info, 4 debug, 5 trace.
     * May be NULL. */
    gw_log_fn log;
} gw_host_api;

struct gw_backend_handle;

/* open(host, config_json, next, out_instance, err) -> code. `config_json` is the plugin's
 * config table as JSON ("{}" when empty); `next` is the layer below for filters and NULL
 * otherwise. On success store the new instance in *out and return GW_OK. */
typedef int32_t (*gw_open_fn)(const gw_host_api *host, gw_str config_json, const struct gw_backend_handle *next,
                              gw_instance *out, gw_error *err);
typedef void (*gw_close_fn)(gw_instance instance);

/* The descriptor the entry point returns; static for the life of the library. */
typedef struct gw_plugin_descriptor {
    size_t struct_size;
    uint32_t abi_major;
    uint32_t abi_minor;
    uint32_t kind;
    const char *name;    /* NUL-terminated, static, non-empty */
    const char *version; /* NUL-terminated, static */
    /* The table of `kind`: gw_backend_vtable for backends and filters, gw_component_vtable,
     * or gw_policy_vtable. */
    const void *vtable;
} gw_plugin_descriptor;

typedef const gw_plugin_descriptor *(*gw_entry_fn)(void);

typedef struct gw_extent {
    uint64_t length;
    uint32_t flags; /* GW_EXTENT_* */
    uint32_t reserved;
} gw_extent;

/* Backend-table entries. */
typedef uint64_t (*gw_size_fn)(gw_instance);
typedef uint64_t (*gw_capabilities_fn)(gw_instance);
typedef int32_t (*gw_read_fn)(gw_instance, uint8_t *buf, size_t len, uint64_t offset, gw_error *err);
typedef int32_t (*gw_write_fn)(gw_instance, const uint8_t *buf, size_t len, uint64_t offset, uint32_t flags,
                               gw_error *err);
typedef int32_t (*gw_flush_fn)(gw_instance, gw_error *err);
typedef int32_t (*gw_trim_fn)(gw_instance, uint64_t offset, uint64_t length, uint32_t flags, gw_error *err);
typedef int32_t (*gw_zero_fn)(gw_instance, uint64_t offset, uint64_t length, uint32_t flags, gw_error *err);
/* Fill up to `cap` extents starting at `offset` (together covering at least one byte and at
 * most `length` bytes); store the count in *n. */
typedef int32_t (*gw_extents_fn)(gw_instance, uint64_t offset, uint64_t length, gw_extent *out, size_t cap,
                                 size_t *n, gw_error *err);
typedef int32_t (*gw_cache_fn)(gw_instance, uint64_t offset, uint64_t length, gw_error *err);

/* Storage operations: implemented by backend and filter plugins, and by the host for the
 * layer below a filter. Every call may come from any thread, many at once. */
typedef struct gw_backend_vtable {
    size_t struct_size;
    gw_open_fn open;
    gw_close_fn close;
    gw_size_fn size;
    gw_capabilities_fn capabilities; /* GW_CAP_* bits */
    gw_read_fn read;
    gw_write_fn write;
    gw_flush_fn flush;
    gw_trim_fn trim;
    /* ---- ABI 1.1 ---- */
    gw_zero_fn zero;
    gw_extents_fn extents;
    gw_cache_fn cache;
} gw_backend_vtable;

/* Size of the backend table as ABI 1.0 defined it (through `trim`). */
#define GW_BACKEND_VTABLE_SIZE_V1_0 offsetof(gw_backend_vtable, zero)

/* A live storage layer: a table plus the instance to call it with. The host passes one to a
 * filter's `open` as the layer below; it stays valid until the filter is closed. Read the
 * table honouring its struct_size. */
typedef struct gw_backend_handle {
    const gw_backend_vtable *vtable;
    gw_instance instance;
} gw_backend_handle;

/* One intercepted update, in the volume's order. */
typedef struct gw_update {
    size_t struct_size;
    gw_str volume;
    uint64_t seq;
    uint64_t offset;
    uint64_t length;
    uint32_t kind;  /* GW_UPDATE_* */
    uint32_t flags; /* GW_FLAG_FUA, GW_FLAG_MAY_TRIM */
    const uint8_t *data; /* `length` bytes for writes, NULL otherwise; valid during the call */
} gw_update;

/* Completion callback. The component calls `complete` EXACTLY ONCE per accepted submission
 * or flush, from any thread, with GW_OK or an errno and a message. */
typedef void (*gw_complete_fn)(void *ctx, int32_t status, gw_str message);
typedef struct gw_completion {
    void *ctx;
    gw_complete_fn complete;
} gw_completion;

/* Backup components receive every intercepted update of the volumes they serve. */
typedef int32_t (*gw_submit_fn)(gw_instance, const gw_update *update, gw_completion done);
typedef int32_t (*gw_component_flush_fn)(gw_instance, gw_str volume, uint64_t upto, gw_completion done);
typedef int32_t (*gw_set_boundary_fn)(gw_instance, gw_str volume, uint64_t set_id, uint64_t upto);
typedef struct gw_component_vtable {
    size_t struct_size;
    gw_open_fn open;
    gw_close_fn close;
    /* GW_OK means the completion will fire; anything else means it never will. */
    gw_submit_fn submit;
    /* Barrier: complete once every update of `volume` with seq <= upto is durable. */
    gw_component_flush_fn flush;
    /* A consistency-set boundary: updates up to `upto` form set `set_id`. */
    gw_set_boundary_fn set_boundary;
} gw_component_vtable;

/* Receives a policy's actions, one JSON document per call. */
typedef void (*gw_emit_fn)(void *ctx, gw_str json);
typedef struct gw_sink {
    void *ctx;
    gw_emit_fn emit;
} gw_sink;

/* Recovery policies: pure state machines fed JSON events, answering JSON actions. */
typedef int32_t (*gw_on_event_fn)(gw_instance, gw_str event_json, gw_sink actions, gw_error *err);
typedef struct gw_policy_vtable {
    size_t struct_size;
    gw_open_fn open;
    gw_close_fn close;
    /* Calls are serialised by the host (never two at once on one instance). */
    gw_on_event_fn on_event;
} gw_policy_vtable;

/* Helpers. */
static inline gw_str gw_str_from(const char *s) {
    gw_str out = {(const uint8_t *)s, s ? strlen(s) : 0};
    return out;
}

/* Store `message` (truncated to fit) in the caller's error buffer, which may be NULL. */
static inline void gw_error_set(gw_error *err, const char *message) {
    size_t n;
    if (!err || !message)
        return;
    n = strlen(message);
    if (n > sizeof err->msg)
        n = sizeof err->msg;
    memcpy(err->msg, message, n);
    err->len = (uint32_t)n;
}

#ifdef __cplusplus
}
#endif

#endif /* GATEWAY_PLUGIN_H */
