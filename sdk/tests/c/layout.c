/*
 * The layout assertions of sdk/src/abi.rs (its `const _: () = { assert!(...) }` block),
 * mirrored number for number against the C header. Compiled by sdk/tests/c_header.rs; a
 * change to either side that the other does not make fails to compile here. Sizes are for
 * 64-bit targets, as in abi.rs.
 */
#include "gateway_plugin.h"

#if UINTPTR_MAX == 0xffffffffffffffffu
_Static_assert(sizeof(gw_str) == 16, "gw_str");
_Static_assert(offsetof(gw_error, len) == 8 && offsetof(gw_error, msg) == 12 && sizeof(gw_error) == 512, "gw_error");
_Static_assert(offsetof(gw_host_api, abi_major) == 8 && offsetof(gw_host_api, abi_minor) == 12, "gw_host_api");
_Static_assert(offsetof(gw_host_api, log) == 16 && sizeof(gw_host_api) == 24, "gw_host_api");
_Static_assert(offsetof(gw_plugin_descriptor, abi_major) == 8, "gw_plugin_descriptor");
_Static_assert(offsetof(gw_plugin_descriptor, abi_minor) == 12, "gw_plugin_descriptor");
_Static_assert(offsetof(gw_plugin_descriptor, kind) == 16, "gw_plugin_descriptor");
_Static_assert(offsetof(gw_plugin_descriptor, name) == 24, "gw_plugin_descriptor");
_Static_assert(offsetof(gw_plugin_descriptor, version) == 32, "gw_plugin_descriptor");
_Static_assert(offsetof(gw_plugin_descriptor, vtable) == 40, "gw_plugin_descriptor");
_Static_assert(sizeof(gw_plugin_descriptor) == 48, "gw_plugin_descriptor");
_Static_assert(offsetof(gw_backend_vtable, open) == 8, "gw_backend_vtable");
_Static_assert(offsetof(gw_backend_vtable, close) == 16, "gw_backend_vtable");
_Static_assert(offsetof(gw_backend_vtable, size) == 24, "gw_backend_vtable");
_Static_assert(offsetof(gw_backend_vtable, capabilities) == 32, "gw_backend_vtable");
_Static_assert(offsetof(gw_backend_vtable, read) == 40, "gw_backend_vtable");
_Static_assert(offsetof(gw_backend_vtable, write) == 48, "gw_backend_vtable");
_Static_assert(offsetof(gw_backend_vtable, flush) == 56, "gw_backend_vtable");
_Static_assert(offsetof(gw_backend_vtable, trim) == 64, "gw_backend_vtable");
_Static_assert(offsetof(gw_backend_vtable, zero) == 72, "gw_backend_vtable");
_Static_assert(offsetof(gw_backend_vtable, extents) == 80, "gw_backend_vtable");
_Static_assert(offsetof(gw_backend_vtable, cache) == 88, "gw_backend_vtable");
_Static_assert(sizeof(gw_backend_vtable) == 96, "gw_backend_vtable");
_Static_assert(GW_BACKEND_VTABLE_SIZE_V1_0 == 72, "GW_BACKEND_VTABLE_SIZE_V1_0");
_Static_assert(sizeof(gw_extent) == 16, "gw_extent");
_Static_assert(sizeof(gw_backend_handle) == 16, "gw_backend_handle");
_Static_assert(offsetof(gw_update, volume) == 8, "gw_update");
_Static_assert(offsetof(gw_update, seq) == 24, "gw_update");
_Static_assert(offsetof(gw_update, offset) == 32, "gw_update");
_Static_assert(offsetof(gw_update, length) == 40, "gw_update");
_Static_assert(offsetof(gw_update, kind) == 48, "gw_update");
_Static_assert(offsetof(gw_update, flags) == 52, "gw_update");
_Static_assert(offsetof(gw_update, data) == 56, "gw_update");
_Static_assert(sizeof(gw_update) == 64, "gw_update");
_Static_assert(sizeof(gw_completion) == 16 && sizeof(gw_sink) == 16, "gw_completion, gw_sink");
_Static_assert(offsetof(gw_component_vtable, open) == 8, "gw_component_vtable");
_Static_assert(offsetof(gw_component_vtable, close) == 16, "gw_component_vtable");
_Static_assert(offsetof(gw_component_vtable, submit) == 24, "gw_component_vtable");
_Static_assert(offsetof(gw_component_vtable, flush) == 32, "gw_component_vtable");
_Static_assert(offsetof(gw_component_vtable, set_boundary) == 40, "gw_component_vtable");
_Static_assert(sizeof(gw_component_vtable) == 48, "gw_component_vtable");
_Static_assert(offsetof(gw_policy_vtable, open) == 8, "gw_policy_vtable");
_Static_assert(offsetof(gw_policy_vtable, close) == 16, "gw_policy_vtable");
_Static_assert(offsetof(gw_policy_vtable, on_event) == 24, "gw_policy_vtable");
_Static_assert(sizeof(gw_policy_vtable) == 32, "gw_policy_vtable");
#endif
