/*
 * A backend written in C against the CURRENT header, implementing every 1.1 entry natively
 * (zero, extents, cache, native FUA), and a pass-through filter that calls the layer below
 * through the gw_backend_handle the host gives it. Loaded by sdk/tests/abi_compat.rs: calls
 * through the 1.1 entries in both directions check the function-pointer types of the header
 * against the Rust ABI, which the layout checks alone cannot.
 *
 * Build with -DFILTER for the filter, without for the backend.
 */
#include "gateway_plugin.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* `last_zero_flags_calls` is the flags of the last zero call (named like the counters). */
static uint64_t n_zero, n_extents, n_cache, n_write_fua, n_flush, n_last_zero_flags;
#define COUNT(c) __atomic_add_fetch(&(c), 1, __ATOMIC_SEQ_CST)
uint64_t c11_zero_calls(void) { return __atomic_load_n(&n_zero, __ATOMIC_SEQ_CST); }
uint64_t c11_extents_calls(void) { return __atomic_load_n(&n_extents, __ATOMIC_SEQ_CST); }
uint64_t c11_cache_calls(void) { return __atomic_load_n(&n_cache, __ATOMIC_SEQ_CST); }
uint64_t c11_write_fua_calls(void) { return __atomic_load_n(&n_write_fua, __ATOMIC_SEQ_CST); }
uint64_t c11_flush_calls(void) { return __atomic_load_n(&n_flush, __ATOMIC_SEQ_CST); }
uint64_t c11_last_zero_flags_calls(void) { return __atomic_load_n(&n_last_zero_flags, __ATOMIC_SEQ_CST); }

#ifndef FILTER

#define SIZE ((uint64_t)4 << 20)
#define BLOCK 4096u

/* 4 MiB in 4 KiB blocks; a block never written or zeroed is a hole. */
struct disk {
    pthread_mutex_t lock;
    uint8_t data[SIZE];
    uint8_t allocated[SIZE / BLOCK];
};

static int32_t d_open(const gw_host_api *host, gw_str config, const gw_backend_handle *next, gw_instance *out,
                      gw_error *err) {
    struct disk *d = calloc(1, sizeof *d);
    (void)host, (void)config, (void)next;
    if (!d) {
        gw_error_set(err, "out of memory");
        return ENOMEM;
    }
    pthread_mutex_init(&d->lock, NULL);
    *out = d;
    return GW_OK;
}

static void d_close(gw_instance i) { free(i); }
static uint64_t d_size(gw_instance i) { (void)i; return SIZE; }
static uint64_t d_caps(gw_instance i) {
    (void)i;
    return GW_CAP_CAN_TRIM | GW_CAP_NATIVE_FUA | GW_CAP_CAN_ZERO | GW_CAP_CAN_FAST_ZERO | GW_CAP_CAN_EXTENTS |
           GW_CAP_CAN_CACHE | GW_CAP_CAN_MULTI_CONN;
}

static void mark(struct disk *d, uint64_t off, uint64_t len, uint8_t v) {
    for (uint64_t b = off / BLOCK; b * BLOCK < off + len; b++)
        d->allocated[b] = v;
}

static int32_t d_read(gw_instance i, uint8_t *buf, size_t len, uint64_t off, gw_error *err) {
    struct disk *d = i;
    (void)err;
    pthread_mutex_lock(&d->lock);
    memcpy(buf, d->data + off, len);
    pthread_mutex_unlock(&d->lock);
    return GW_OK;
}

static int32_t d_write(gw_instance i, const uint8_t *buf, size_t len, uint64_t off, uint32_t flags, gw_error *err) {
    struct disk *d = i;
    (void)err;
    if (flags & GW_FLAG_FUA)
        COUNT(n_write_fua);
    pthread_mutex_lock(&d->lock);
    memcpy(d->data + off, buf, len);
    mark(d, off, len, 1);
    pthread_mutex_unlock(&d->lock);
    return GW_OK;
}

static int32_t d_flush(gw_instance i, gw_error *err) {
    (void)i, (void)err;
    COUNT(n_flush);
    return GW_OK;
}

static int32_t d_trim(gw_instance i, uint64_t off, uint64_t len, uint32_t flags, gw_error *err) {
    (void)i, (void)off, (void)len, (void)flags, (void)err;
    return GW_OK;
}

/* Block-aligned zeroes become holes; anything else is written. */
static int32_t d_zero(gw_instance i, uint64_t off, uint64_t len, uint32_t flags, gw_error *err) {
    struct disk *d = i;
    (void)err;
    COUNT(n_zero);
    __atomic_store_n(&n_last_zero_flags, flags, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&d->lock);
    memset(d->data + off, 0, len);
    if (off % BLOCK == 0 && len % BLOCK == 0 && (flags & GW_FLAG_MAY_TRIM))
        mark(d, off, len, 0);
    else
        mark(d, off, len, 1);
    pthread_mutex_unlock(&d->lock);
    return GW_OK;
}

static int32_t d_extents(gw_instance i, uint64_t off, uint64_t len, gw_extent *out, size_t cap, size_t *n,
                         gw_error *err) {
    struct disk *d = i;
    size_t count = 0;
    uint64_t pos = off, end = off + len;
    COUNT(n_extents);
    if (cap == 0) {
        gw_error_set(err, "no room for extents");
        return EINVAL;
    }
    pthread_mutex_lock(&d->lock);
    while (pos < end && count < cap) {
        uint8_t a = d->allocated[pos / BLOCK];
        uint64_t run_end = (pos / BLOCK + 1) * BLOCK;
        while (run_end < end && d->allocated[run_end / BLOCK] == a)
            run_end += BLOCK;
        if (run_end > end)
            run_end = end;
        out[count].length = run_end - pos;
        out[count].flags = a ? 0 : (GW_EXTENT_HOLE | GW_EXTENT_ZERO);
        out[count].reserved = 0;
        count++;
        pos = run_end;
    }
    pthread_mutex_unlock(&d->lock);
    *n = count;
    return GW_OK;
}

static int32_t d_cache(gw_instance i, uint64_t off, uint64_t len, gw_error *err) {
    (void)i, (void)off, (void)len, (void)err;
    COUNT(n_cache);
    return GW_OK;
}

static const gw_backend_vtable vtable = {
    .struct_size = sizeof(gw_backend_vtable),
    .open = d_open, .close = d_close, .size = d_size, .capabilities = d_caps,
    .read = d_read, .write = d_write, .flush = d_flush, .trim = d_trim,
    .zero = d_zero, .extents = d_extents, .cache = d_cache,
};
#define KIND GW_KIND_BACKEND
#define NAME "c11-backend"

#else /* FILTER */

/* Forwards every call to the layer below, reading its table honouring struct_size. */
struct filter {
    gw_backend_vtable next; /* zero-filled past what the host's table provides */
    gw_instance below;
};

static int32_t f_open(const gw_host_api *host, gw_str config, const gw_backend_handle *next, gw_instance *out,
                      gw_error *err) {
    struct filter *f;
    size_t n;
    (void)host, (void)config;
    if (!next || !next->vtable) {
        gw_error_set(err, "a filter needs a layer below");
        return EINVAL;
    }
    f = calloc(1, sizeof *f);
    if (!f)
        return ENOMEM;
    n = next->vtable->struct_size < sizeof f->next ? next->vtable->struct_size : sizeof f->next;
    memcpy(&f->next, next->vtable, n);
    f->below = next->instance;
    if (!f->next.zero || !f->next.extents || !f->next.cache) {
        free(f);
        gw_error_set(err, "the host's table lacks 1.1 entries");
        return EINVAL;
    }
    *out = f;
    return GW_OK;
}

#define F ((struct filter *)i)
static void f_close(gw_instance i) { free(i); }
static uint64_t f_size(gw_instance i) { return F->next.size(F->below); }
static uint64_t f_caps(gw_instance i) { return F->next.capabilities(F->below); }
static int32_t f_read(gw_instance i, uint8_t *buf, size_t len, uint64_t off, gw_error *err) {
    return F->next.read(F->below, buf, len, off, err);
}
static int32_t f_write(gw_instance i, const uint8_t *buf, size_t len, uint64_t off, uint32_t flags, gw_error *err) {
    return F->next.write(F->below, buf, len, off, flags, err);
}
static int32_t f_flush(gw_instance i, gw_error *err) { return F->next.flush(F->below, err); }
static int32_t f_trim(gw_instance i, uint64_t off, uint64_t len, uint32_t flags, gw_error *err) {
    return F->next.trim(F->below, off, len, flags, err);
}
static int32_t f_zero(gw_instance i, uint64_t off, uint64_t len, uint32_t flags, gw_error *err) {
    COUNT(n_zero);
    return F->next.zero(F->below, off, len, flags, err);
}
static int32_t f_extents(gw_instance i, uint64_t off, uint64_t len, gw_extent *out, size_t cap, size_t *n,
                         gw_error *err) {
    COUNT(n_extents);
    return F->next.extents(F->below, off, len, out, cap, n, err);
}
static int32_t f_cache(gw_instance i, uint64_t off, uint64_t len, gw_error *err) {
    COUNT(n_cache);
    return F->next.cache(F->below, off, len, err);
}

static const gw_backend_vtable vtable = {
    .struct_size = sizeof(gw_backend_vtable),
    .open = f_open, .close = f_close, .size = f_size, .capabilities = f_caps,
    .read = f_read, .write = f_write, .flush = f_flush, .trim = f_trim,
    .zero = f_zero, .extents = f_extents, .cache = f_cache,
};
#define KIND GW_KIND_FILTER
#define NAME "c11-filter"

#endif

static const gw_plugin_descriptor descriptor = {
    .struct_size = sizeof(gw_plugin_descriptor),
    .abi_major = GW_ABI_MAJOR,
    .abi_minor = GW_ABI_MINOR,
    .kind = KIND,
    .name = NAME,
    .version = "1.1.0",
    .vtable = &vtable,
};

const gw_plugin_descriptor *gw_plugin_entry_v1(void) { return &descriptor; }
