/*
 * A backend plugin built against the FROZEN 1.0 header: what a plugin compiled before ABI 1.1
 * existed looks like to the current gateway. Its backend table ends at `trim` (72 bytes on a
 * 64-bit target), it reports CAN_TRIM only (no native FUA, no zero, extents or cache), so the
 * host must emulate zero, FUA, extents and cache. It counts its own calls so a test can see
 * the emulation happen (e.g. FUA by a `flush`).
 *
 *   gcc -shared -fPIC -O2 -o libgw_fixture10.so fixture_backend.c
 *
 * Config (JSON): {"size": <bytes>} -- optional, default 64 MiB.
 *
 * Test knobs (compile-time): -DGW_ENTRY=gw_plugin_entry_v2 exports the entry point under
 * another major's name; -DGW_DESC_MAJOR=2 makes the descriptor claim another major version.
 */
#include "gateway_plugin.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef GW_ENTRY
#define GW_ENTRY gw_plugin_entry_v1
#endif
#ifndef GW_DESC_MAJOR
#define GW_DESC_MAJOR GW_ABI_MAJOR
#endif

#define DEFAULT_SIZE ((uint64_t)64 << 20)

struct fixture {
    pthread_mutex_t lock;
    uint8_t *data;
    uint64_t size;
};

/* Call counters, over every instance of this library. */
static uint64_t n_open, n_close, n_read, n_write, n_write_fua, n_flush, n_trim;

#define COUNT(c) __atomic_add_fetch(&(c), 1, __ATOMIC_SEQ_CST)
#define LOAD(c) __atomic_load_n(&(c), __ATOMIC_SEQ_CST)

uint64_t fixture_open_calls(void) { return LOAD(n_open); }
uint64_t fixture_close_calls(void) { return LOAD(n_close); }
uint64_t fixture_read_calls(void) { return LOAD(n_read); }
uint64_t fixture_write_calls(void) { return LOAD(n_write); }
/* Writes that arrived with GW_FLAG_FUA set: should stay 0, since NATIVE_FUA is not reported. */
uint64_t fixture_write_fua_calls(void) { return LOAD(n_write_fua); }
uint64_t fixture_flush_calls(void) { return LOAD(n_flush); }
uint64_t fixture_trim_calls(void) { return LOAD(n_trim); }

static void set_err(gw_error *err, const char *msg) {
    size_t n;
    if (!err)
        return;
    n = strlen(msg);
    if (n > sizeof err->msg)
        n = sizeof err->msg;
    memcpy(err->msg, msg, n);
    err->len = (uint32_t)n;
}

/* The "size" member of a flat JSON object, or `dflt`. Good enough for a fixture. */
static int config_size(gw_str cfg, uint64_t dflt, uint64_t *out) {
    char buf[1024];
    const char *p;
    char *end;
    size_t n = cfg.len < sizeof buf - 1 ? cfg.len : sizeof buf - 1;
    unsigned long long v;
    if (cfg.ptr)
        memcpy(buf, cfg.ptr, n);
    else
        n = 0;
    buf[n] = 0;
    p = strstr(buf, "\"size\"");
    if (!p) {
        *out = dflt;
        return 0;
    }
    p = strchr(p + 6, ':');
    if (!p)
        return -1;
    p++;
    while (*p == ' ')
        p++;
    errno = 0;
    v = strtoull(p, &end, 10);
    if (end == p || errno || v == 0)
        return -1;
    *out = v;
    return 0;
}

static int32_t fx_open(const gw_host_api *host, gw_str config, const gw_backend_handle *next, gw_instance *out,
                       gw_error *err) {
    struct fixture *f;
    uint64_t size;
    (void)next;
    if (config_size(config, DEFAULT_SIZE, &size) != 0) {
        set_err(err, "fixture10: `size` must be a positive number of bytes");
        return EINVAL;
    }
    f = calloc(1, sizeof *f);
    if (!f) {
        set_err(err, "fixture10: out of memory");
        return ENOMEM;
    }
    f->data = calloc(1, size);
    if (!f->data) {
        free(f);
        set_err(err, "fixture10: cannot allocate the disk");
        return ENOMEM;
    }
    f->size = size;
    pthread_mutex_init(&f->lock, NULL);
    if (host && host->struct_size >= offsetof(gw_host_api, log) + sizeof host->log && host->log) {
        char line[128];
        snprintf(line, sizeof line, "fixture10 open: %llu bytes, host ABI %u.%u", (unsigned long long)size,
                 host->abi_major, host->abi_minor);
        host->log(3, gw_str_from("fixture10"), gw_str_from(line));
    }
    COUNT(n_open);
    *out = f;
    return GW_OK;
}

static void fx_close(gw_instance i) {
    struct fixture *f = i;
    COUNT(n_close);
    if (!f)
        return;
    pthread_mutex_destroy(&f->lock);
    free(f->data);
    free(f);
}

static uint64_t fx_size(gw_instance i) { return ((struct fixture *)i)->size; }

static uint64_t fx_capabilities(gw_instance i) {
    (void)i;
    return GW_CAP_CAN_TRIM;
}

static int in_range(struct fixture *f, uint64_t off, uint64_t len, gw_error *err) {
    if (off > f->size || len > f->size - off) {
        set_err(err, "fixture10: range outside the disk");
        return 0;
    }
    return 1;
}

static int32_t fx_read(gw_instance i, uint8_t *buf, size_t len, uint64_t off, gw_error *err) {
    struct fixture *f = i;
    COUNT(n_read);
    if (!in_range(f, off, len, err))
        return EINVAL;
    pthread_mutex_lock(&f->lock);
    memcpy(buf, f->data + off, len);
    pthread_mutex_unlock(&f->lock);
    return GW_OK;
}

static int32_t fx_write(gw_instance i, const uint8_t *buf, size_t len, uint64_t off, uint32_t flags,
                        gw_error *err) {
    struct fixture *f = i;
    COUNT(n_write);
    if (flags & GW_FLAG_FUA)
        COUNT(n_write_fua);
    if (!in_range(f, off, len, err))
        return EINVAL;
    pthread_mutex_lock(&f->lock);
    memcpy(f->data + off, buf, len);
    pthread_mutex_unlock(&f->lock);
    return GW_OK;
}

static int32_t fx_flush(gw_instance i, gw_error *err) {
    (void)i;
    (void)err;
    COUNT(n_flush);
    return GW_OK;
}

/* Trim forgets the range: it reads back as zeroes afterwards (allowed, not promised). */
static int32_t fx_trim(gw_instance i, uint64_t off, uint64_t len, uint32_t flags, gw_error *err) {
    struct fixture *f = i;
    (void)flags;
    COUNT(n_trim);
    if (!in_range(f, off, len, err))
        return EINVAL;
    pthread_mutex_lock(&f->lock);
    memset(f->data + off, 0, len);
    pthread_mutex_unlock(&f->lock);
    return GW_OK;
}

static const gw_backend_vtable vtable = {
    .struct_size = sizeof(gw_backend_vtable), /* 72 on 64-bit: the 1.0 table */
    .open = fx_open,
    .close = fx_close,
    .size = fx_size,
    .capabilities = fx_capabilities,
    .read = fx_read,
    .write = fx_write,
    .flush = fx_flush,
    .trim = fx_trim,
};

static const gw_plugin_descriptor descriptor = {
    .struct_size = sizeof(gw_plugin_descriptor),
    .abi_major = GW_DESC_MAJOR,
    .abi_minor = GW_ABI_MINOR,
    .kind = GW_KIND_BACKEND,
    .name = "fixture10",
    .version = "1.0.0",
    .vtable = &vtable,
};

_Static_assert(sizeof(void *) != 8 || sizeof(gw_backend_vtable) == 72, "the 1.0 backend table is 72 bytes");

const gw_plugin_descriptor *GW_ENTRY(void) { return &descriptor; }
