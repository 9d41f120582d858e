//! ABI compatibility: a backend plugin written in C against the FROZEN 1.0 header
//! (`sdk/abi/v1.0/fixture_backend.c`, whose backend table ends at `trim`) runs on the current
//! (1.1) host. The host must emulate what 1.0 lacks -- zero by writing zero buffers, FUA by a
//! flush (the fixture reports no native FUA), extents as "all data", cache as a no-op -- both
//! through the host API in-process and behind the real daemon with `qemu-io` as the client.
//! Libraries of another major version are refused, naming the version.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use gateway::plugin::{load, open_layer, open_policy};
use gateway_sdk::abi::{ABI_MAJOR, KIND_BACKEND};
use gateway_sdk::{Backend, ErrorKind, ZeroFlags};

const MIB: u64 = 1 << 20;

/// A C plugin's own call counters, read through its exported functions.
struct Counters {
    lib: libloading::Library,
    prefix: &'static str,
}

impl Counters {
    fn new(path: &Path, prefix: &'static str) -> Counters {
        // SAFETY: the plugin is already loaded by the host (libraries are never unloaded);
        // this only takes another reference to it, and its initialisers are trivial.
        Counters { lib: unsafe { libloading::Library::new(path) }.expect("reopening the plugin"), prefix }
    }

    /// `<prefix>_<name>_calls()`, e.g. `fixture_flush_calls()`.
    fn get(&self, name: &str) -> u64 {
        let sym = format!("{}_{name}_calls\0", self.prefix);
        // SAFETY: the C plugins export these as `uint64_t <prefix>_<name>_calls(void)`.
        let f = unsafe { self.lib.get::<unsafe extern "C" fn() -> u64>(sym.as_bytes()) }.expect("counter symbol");
        // SAFETY: a plain C function without arguments that reads an atomic counter.
        unsafe { f() }
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

#[test]
fn frozen_1_0_backend_runs_with_emulation() {
    let tmp = tempfile::tempdir().unwrap();
    let so = common::build_fixture10(tmp.path(), "libgw_fixture10.so", &[]);
    let plugin = load(so.to_str().unwrap(), tmp.path()).unwrap();
    assert_eq!((plugin.name(), plugin.kind()), ("fixture10", KIND_BACKEND));
    assert_eq!((plugin.abi_major(), plugin.abi_minor()), (1, 0));
    let counters = Counters::new(&so, "fixture");

    let layer = open_layer(&plugin, &serde_json::json!({ "size": 8 * MIB }), None).unwrap();
    let b: &dyn Backend = &layer;
    let emu = &layer.imported().emulation;
    assert_eq!(b.size(), 8 * MIB);
    let caps = b.capabilities();
    assert!(caps.can_trim, "{caps:?}");
    assert!(!caps.can_zero && !caps.can_fast_zero && !caps.native_fua, "{caps:?}");
    assert!(!caps.can_extents && !caps.can_cache && !caps.blocking, "{caps:?}");

    // Plain write and read back.
    let data = pattern(7, 256 * 1024);
    b.write_at(&data, MIB, false).unwrap();
    let mut back = vec![0u8; data.len()];
    b.read_at(&mut back, MIB).unwrap();
    assert!(back == data, "read back differs from what was written");

    // zero: emulated by writing zero buffers; the range reads back as zeroes, the rest stays.
    let writes_before = counters.get("write");
    b.zero(MIB + 4096, 64 * 1024, ZeroFlags::default()).unwrap();
    assert!(emu.zero_by_writes.load(Ordering::Relaxed) > 0);
    assert!(counters.get("write") > writes_before, "zero was not carried out by writes");
    b.read_at(&mut back, MIB).unwrap();
    assert!(back[..4096] == data[..4096] && back[4096 + 65536..] == data[4096 + 65536..]);
    assert!(back[4096..4096 + 65536].iter().all(|&x| x == 0), "zeroed range does not read as zeroes");

    // A fast-only zero cannot be emulated: refused, contents unchanged.
    let e = b.zero(MIB, 4096, ZeroFlags { fast_only: true, ..Default::default() }).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotSupported, "{e}");
    let mut first = vec![0u8; 4096];
    b.read_at(&mut first, MIB).unwrap();
    assert!(first[..] == data[..4096]);

    // FUA write: the fixture has no native FUA, so the host follows the write with a flush
    // and never passes the FUA flag down.
    let flushes = counters.get("flush");
    b.write_at(&pattern(9, 4096), 3 * MIB, true).unwrap();
    assert_eq!(emu.fua_by_flush.load(Ordering::Relaxed), 1);
    assert_eq!(counters.get("flush"), flushes + 1, "FUA was not emulated by exactly one flush");
    assert_eq!(counters.get("write_fua"), 0, "the FUA flag reached a plugin without native FUA");
    // Zero with FUA: zero buffers, then a flush.
    b.zero(3 * MIB, 4096, ZeroFlags { fua: true, ..Default::default() }).unwrap();
    assert_eq!(counters.get("flush"), flushes + 2);

    // extents: everything is data, as one extent of the requested length.
    let ext = b.extents(0, 2 * MIB).unwrap();
    assert_eq!(ext.len(), 1, "{ext:?}");
    assert_eq!((ext[0].length, ext[0].hole, ext[0].zero), (2 * MIB, false, false));
    assert!(emu.extents_as_data.load(Ordering::Relaxed) > 0);

    // cache: a successful no-op.
    b.cache(0, MIB).unwrap();
    assert!(emu.cache_as_noop.load(Ordering::Relaxed) > 0);

    // trim is a 1.0 entry: called natively.
    let trims = counters.get("trim");
    b.trim(5 * MIB, MIB, false).unwrap();
    assert_eq!(counters.get("trim"), trims + 1);

    // flush reaches the plugin.
    let flushes = counters.get("flush");
    b.flush().unwrap();
    assert_eq!(counters.get("flush"), flushes + 1);

    // The plugin's errors come back as errors with its message.
    let e = layer.imported().read_at(&mut [0u8; 16], 8 * MIB).unwrap_err();
    assert!(e.to_string().contains("range outside the disk"), "{e}");

    // Many threads at once, on disjoint ranges (the ABI allows concurrent calls).
    let layer = Arc::new(layer);
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let l = Arc::clone(&layer);
            std::thread::spawn(move || {
                for round in 0..16u64 {
                    let off = 4 * MIB + (u64::from(t) * 16 + round) * 4096;
                    let buf = pattern(t ^ round as u8, 4096);
                    l.write_at(&buf, off, round % 4 == 0).unwrap();
                    let mut got = vec![0u8; 4096];
                    l.read_at(&mut got, off).unwrap();
                    assert!(got == buf, "thread {t} round {round}: read back differs");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    // The host closes the instance exactly once when the layer goes.
    assert_eq!(counters.get("close"), 0);
    drop(Arc::try_unwrap(layer).ok().expect("no other references"));
    assert_eq!((counters.get("open"), counters.get("close")), (1, 1));
}

#[test]
fn frozen_1_0_backend_served_by_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let so = common::build_fixture10(tmp.path(), "libgw_fixture10.so", &[]);
    let config = format!(
        "[[export]]\nname = \"old\"\n[export.backend]\ntype = \"plugin\"\nplugin = \"{}\"\n\
         [export.backend.config]\nsize = {}\n",
        so.display(),
        16 * MIB
    );
    let d = common::Daemon::start(tmp.path(), &config);
    let uri = d.uri("old");
    common::qemu_io_ok(
        &uri,
        &[
            "write -P 0xab 0 3M",
            "write -z 1M 1M",
            "write -f -P 0xcd 2M 64k",
            "write -z -f 2176k 64k",
            "discard 8M 1M",
            "flush",
        ],
    );
    common::qemu_io_ok(
        &uri,
        &[
            "read -P 0xab 0 1M",
            "read -P 0 1M 1M",
            "read -P 0xcd 2M 64k",
            "read -P 0 2176k 64k",
            "read -P 0xab 2240k 832k",
        ],
    );
    let log = d.log();
    assert!(
        log.contains("fixture10 open: 16777216 bytes, host ABI 1.1"),
        "the plugin's host log line is missing:\n{log}"
    );
    assert!(log.contains("older backend table"), "the host did not note the 1.0 table:\n{log}");
}

/// The other direction: C plugins built against the current header, using every 1.1 entry
/// natively. A C backend (zero, extents, cache, native FUA) under a C filter that forwards
/// every call through the `gw_backend_handle` the host exports for the layer below: each call
/// crosses the ABI twice, C -> Rust -> C, so a wrong function-pointer type in the header
/// would show here. Nothing is emulated.
#[test]
fn current_header_c_plugins_use_every_1_1_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::sdk_dir().join("tests/c");
    let include = common::sdk_dir().join("include");
    let src = dir.join("backend_v1_1.c");
    let backend_so = common::build_c_plugin(&[&src], &include, &tmp.path().join("libgw_c11b.so"), &[]);
    let filter_so = common::build_c_plugin(&[&src], &include, &tmp.path().join("libgw_c11f.so"), &["-DFILTER"]);
    let (bc, fc) = (Counters::new(&backend_so, "c11"), Counters::new(&filter_so, "c11"));
    let backend = load(backend_so.to_str().unwrap(), tmp.path()).unwrap();
    let filter = load(filter_so.to_str().unwrap(), tmp.path()).unwrap();
    assert_eq!((backend.abi_minor(), filter.abi_minor()), (1, 1));
    let below: Arc<dyn Backend> = Arc::new(open_layer(&backend, &serde_json::json!({}), None).unwrap());
    let layer = open_layer(&filter, &serde_json::json!({}), Some(below)).unwrap();
    let b: &dyn Backend = &layer;
    let caps = b.capabilities();
    assert!(caps.can_zero && caps.can_fast_zero && caps.can_extents && caps.can_cache && caps.native_fua, "{caps:?}");
    assert_eq!(b.size(), 4 * MIB);

    b.write_at(&pattern(3, 8192), 0, false).unwrap();
    let ext = b.extents(0, 64 * 1024).unwrap();
    let got: Vec<_> = ext.iter().map(|e| (e.length, e.hole, e.zero)).collect();
    assert_eq!(got, vec![(8192, false, false), (57344, true, true)]);

    // zero, with its flags intact through both hops.
    b.zero(0, 4096, ZeroFlags { may_trim: true, ..Default::default() }).unwrap();
    assert_eq!((fc.get("zero"), bc.get("zero")), (1, 1));
    assert_eq!(bc.get("last_zero_flags"), u64::from(gateway_sdk::abi::FLAG_MAY_TRIM));
    b.zero(4096, 4096, ZeroFlags { fast_only: true, fua: true, may_trim: false }).unwrap();
    let want = gateway_sdk::abi::FLAG_FAST_ONLY | gateway_sdk::abi::FLAG_FUA;
    assert_eq!(bc.get("last_zero_flags"), u64::from(want));
    let ext = b.extents(0, 16384).unwrap();
    let got: Vec<_> = ext.iter().map(|e| (e.length, e.hole)).collect();
    assert_eq!(got, vec![(4096, true), (4096, false), (8192, true)]);
    let mut back = vec![1u8; 8192];
    b.read_at(&mut back, 0).unwrap();
    assert!(back.iter().all(|&x| x == 0));

    // Native FUA: the flag reaches the backend and no flush is added.
    let flushes = bc.get("flush");
    b.write_at(&pattern(4, 4096), MIB, true).unwrap();
    assert_eq!((bc.get("write_fua"), bc.get("flush")), (1, flushes));

    b.cache(0, MIB).unwrap();
    assert_eq!((fc.get("cache"), bc.get("cache")), (1, 1));
    assert_eq!((fc.get("extents"), bc.get("extents")), (2, 2));
    let emu = &layer.imported().emulation;
    for (what, n) in [
        ("zero_by_writes", &emu.zero_by_writes),
        ("fua_by_flush", &emu.fua_by_flush),
        ("extents_as_data", &emu.extents_as_data),
        ("cache_as_noop", &emu.cache_as_noop),
    ] {
        assert_eq!(n.load(Ordering::Relaxed), 0, "{what} was emulated for a 1.1 plugin");
    }
}

#[test]
fn entry_point_of_another_major_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let so = common::build_fixture10(tmp.path(), "libgw_v2.so", &["-DGW_ENTRY=gw_plugin_entry_v2"]);
    let Err(e) = load(so.to_str().unwrap(), tmp.path()) else { panic!("a v2-only library must be refused") };
    let e = e.to_string();
    assert!(e.contains("major 2") && e.contains("gw_plugin_entry_v2"), "{e}");
    assert!(e.contains(&format!("major {ABI_MAJOR}")) && e.contains("libgw_v2.so"), "{e}");
}

#[test]
fn descriptor_claiming_another_major_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let so = common::build_fixture10(tmp.path(), "libgw_liar.so", &["-DGW_DESC_MAJOR=2"]);
    let Err(e) = load(so.to_str().unwrap(), tmp.path()) else { panic!("a major-2 descriptor must be refused") };
    let e = e.to_string();
    assert!(e.contains("ABI 2.0") && e.contains("ABI 1.x") && e.contains("libgw_liar.so"), "{e}");
}

#[test]
fn fixture_in_the_wrong_slot_or_writable_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let so = common::build_fixture10(tmp.path(), "libgw_fixture10.so", &[]);
    // By name, from the plugin directory.
    let plugin = load("fixture10", tmp.path()).unwrap();
    let e = open_policy(&plugin, &serde_json::json!({})).err().unwrap().to_string();
    assert!(e.contains("is a backend plugin, but this slot takes a recovery policy plugin"), "{e}");
    let below: Arc<dyn Backend> = Arc::new(open_layer(&plugin, &serde_json::json!({}), None).unwrap());
    assert_eq!(below.size(), 64 * MIB, "the fixture's default size");
    let e = open_layer(&plugin, &serde_json::json!({}), Some(below)).err().unwrap().to_string();
    assert!(e.contains("is a backend plugin, but this slot takes a filter plugin"), "{e}");
    // The plugin's own refusal of its config reaches the operator.
    let e = open_layer(&plugin, &serde_json::json!({ "size": "big" }), None).err().unwrap().to_string();
    assert!(e.contains("open failed") && e.contains("`size` must be a positive number"), "{e}");
    // Group-writable: refused before it is even opened.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&so, std::fs::Permissions::from_mode(0o775)).unwrap();
    let e = load(so.to_str().unwrap(), tmp.path()).err().unwrap().to_string();
    assert!(e.contains("group- or world-writable"), "{e}");
}
