/*
 * gateway_plugin.h -- the gateway's plugin ABI, version 1.0. FROZEN: DO NOT EDIT.
 *
 * This is the header as ABI 1.0 shipped it, kept so that a plugin built against 1.0 can be
 * rebuilt and tested forever (sdk/abi/v1.0/fixture_backend.c is one; sdk/tests/abi_compat.rs
 * loads it into the current gateway). The current header is sdk/include/gateway_plugin.h;
 * every structure here is a prefix of the structure of the same name there.
 *
 * The promise (see the current header for the full text): one entry symbol per major
 * version (`gw_plugin_entry_v1`); every structure starts with `struct_size` and only ever
 * grows at the end; optional entries a plugin lacks are emulated by the host; every backend
 * entry may be called from any thread, concurrently; buffers and strings are borrowed for
 * the call only; entries return GW_OK, an errno value, or GW_EPANIC.
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
#define GW_ABI_MINOR 0
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

/* Capability bits, returned by a backend table's `capabilities`. */
#define GW_CAP_CAN_TRIM ((uint64_t)1 << 0)
#define GW_CAP_NATIVE_FUA ((uint64_t)1 << 1)
#define GW_CAP_CAN_MULTI_CONN ((uint64_t)1 << 2)
#define GW_CAP_BLOCKING ((uint64_t)1 << 3)

/* Request flags for write and trim, and gw_update.flags. */
#define GW_FLAG_FUA ((uint32_t)1 << 0)
#define GW_FLAG_MAY_TRIM ((uint32_t)1 << 1)

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

/* Backend-table entries. */
typedef uint64_t (*gw_size_fn)(gw_instance);
typedef uint64_t (*gw_capabilities_fn)(gw_instance);
typedef int32_t (*gw_read_fn)(gw_instance, uint8_t *buf, size_t len, uint64_t offset, gw_error *err);
typedef int32_t (*gw_write_fn)(gw_instance, const uint8_t *buf, size_t len, uint64_t offset, uint32_t flags,
                               gw_error *err);
typedef int32_t (*gw_flush_fn)(gw_instance, gw_error *err);
typedef int32_t (*gw_trim_fn)(gw_instance, uint64_t offset, uint64_t length, uint32_t flags, gw_error *err);

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
} gw_backend_vtable;

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
