//! The C headers against the Rust ABI (`sdk/src/abi.rs`), so neither can drift:
//!
//! * `tests/c/layout.c` mirrors abi.rs's compile-time layout assertions number for number
//!   (checked textually here) and must compile against `include/gateway_plugin.h`;
//! * a C file generated from the Rust types at run time (`offset_of!`, `size_of`, `align_of`
//!   of every field of every structure, and the value of every constant) must compile against
//!   the current header, and its 1.0 subset against the frozen `abi/v1.0/gateway_plugin.h`;
//! * every structure, field and constant abi.rs declares is covered by those checks (parsed
//!   from abi.rs, so adding a field in Rust without adding it here and in C fails);
//! * both headers compile as C11 and C++ with warnings as errors.

mod common;

use std::collections::BTreeSet;
use std::mem::{align_of, offset_of, size_of};
use std::path::Path;
use std::process::Command;

use gateway_sdk::abi::*;

/// `GwBackendVtable` -> `gw_backend_vtable`.
fn c_name(rust: &str) -> String {
    let mut out = String::new();
    for (i, ch) in rust.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

fn size_of_field<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// One structure: its Rust name, size, alignment and fields (name, offset, size), and the
/// ABI minor version that introduced each field (0 for 1.0).
struct Layout {
    rust: &'static str,
    size: usize,
    align: usize,
    since_minor: u32,
    fields: Vec<(&'static str, usize, usize, u32)>,
}

macro_rules! layout {
    ($since:expr, $ty:ident { $($f:ident $(@ $fs:expr)?),* $(,)? }) => {
        Layout {
            rust: stringify!($ty),
            size: size_of::<$ty>(),
            align: align_of::<$ty>(),
            since_minor: $since,
            fields: vec![$((
                stringify!($f),
                offset_of!($ty, $f),
                size_of_field(|s: &$ty| &s.$f),
                layout!(@since $($fs)?),
            )),*],
        }
    };
    (@since) => { 0 };
    (@since $e:expr) => { $e };
}

fn layouts() -> Vec<Layout> {
    vec![
        layout!(0, GwStr { ptr, len }),
        layout!(0, GwError { struct_size, len, msg }),
        layout!(0, GwHostApi { struct_size, abi_major, abi_minor, log }),
        layout!(0, GwPluginDescriptor { struct_size, abi_major, abi_minor, kind, name, version, vtable }),
        layout!(1, GwExtent { length, flags, reserved }),
        layout!(
            0,
            GwBackendVtable {
                struct_size,
                open,
                close,
                size,
                capabilities,
                read,
                write,
                flush,
                trim,
                zero @ 1,
                extents @ 1,
                cache @ 1,
            }
        ),
        layout!(0, GwBackendHandle { vtable, instance }),
        layout!(0, GwUpdate { struct_size, volume, seq, offset, length, kind, flags, data }),
        layout!(0, GwCompletion { ctx, complete }),
        layout!(0, GwComponentVtable { struct_size, open, close, submit, flush, set_boundary }),
        layout!(0, GwSink { ctx, emit }),
        layout!(0, GwPolicyVtable { struct_size, open, close, on_event }),
    ]
}

/// Every numeric constant of abi.rs: (Rust name, C name, value, ABI minor that added it).
fn constants() -> Vec<(&'static str, String, i128, u32)> {
    let c = |r: &'static str, v: i128, since: u32| {
        let cname = if r.starts_with("GW_") { r.to_owned() } else { format!("GW_{r}") };
        (r, cname, v, since)
    };
    vec![
        c("ABI_MAJOR", ABI_MAJOR.into(), 0),
        c("KIND_BACKEND", KIND_BACKEND.into(), 0),
        c("KIND_FILTER", KIND_FILTER.into(), 0),
        c("KIND_BACKUP_COMPONENT", KIND_BACKUP_COMPONENT.into(), 0),
        c("KIND_RECOVERY_POLICY", KIND_RECOVERY_POLICY.into(), 0),
        c("GW_OK", GW_OK.into(), 0),
        c("GW_EPANIC", GW_EPANIC.into(), 0),
        c("CAP_CAN_TRIM", CAP_CAN_TRIM.into(), 0),
        c("CAP_NATIVE_FUA", CAP_NATIVE_FUA.into(), 0),
        c("CAP_CAN_MULTI_CONN", CAP_CAN_MULTI_CONN.into(), 0),
        c("CAP_BLOCKING", CAP_BLOCKING.into(), 0),
        c("CAP_CAN_ZERO", CAP_CAN_ZERO.into(), 1),
        c("CAP_CAN_FAST_ZERO", CAP_CAN_FAST_ZERO.into(), 1),
        c("CAP_CAN_EXTENTS", CAP_CAN_EXTENTS.into(), 1),
        c("CAP_CAN_CACHE", CAP_CAN_CACHE.into(), 1),
        c("FLAG_FUA", FLAG_FUA.into(), 0),
        c("FLAG_MAY_TRIM", FLAG_MAY_TRIM.into(), 0),
        c("FLAG_FAST_ONLY", FLAG_FAST_ONLY.into(), 1),
        c("EXTENT_HOLE", EXTENT_HOLE.into(), 1),
        c("EXTENT_ZERO", EXTENT_ZERO.into(), 1),
        c("UPDATE_WRITE", UPDATE_WRITE.into(), 0),
        c("UPDATE_TRIM", UPDATE_TRIM.into(), 0),
        c("UPDATE_ZERO", UPDATE_ZERO.into(), 0),
    ]
}

/// C assertions for every structure and constant introduced at or before `minor`.
fn generated_checks(minor: u32) -> String {
    let mut c = String::from("#include \"gateway_plugin.h\"\n\n");
    c += &format!("_Static_assert(GW_ABI_MINOR == {minor}, \"GW_ABI_MINOR\");\n");
    for l in layouts().iter().filter(|l| l.since_minor <= minor) {
        let cn = c_name(l.rust);
        let fields: Vec<_> = l.fields.iter().filter(|f| f.3 <= minor).collect();
        // The structure as of `minor` ends where its first later field starts.
        let size = l.fields.iter().find(|f| f.3 > minor).map_or(l.size, |f| f.1);
        c += &format!("_Static_assert(sizeof({cn}) == {size}, \"sizeof {cn}\");\n");
        c += &format!("_Static_assert(_Alignof({cn}) == {}, \"alignof {cn}\");\n", l.align);
        for (f, off, sz, _) in fields {
            c += &format!("_Static_assert(offsetof({cn}, {f}) == {off}, \"offsetof {cn}.{f}\");\n");
            c += &format!("_Static_assert(sizeof((({cn} *)0)->{f}) == {sz}, \"sizeof {cn}.{f}\");\n");
        }
    }
    for (_, cn, v, since) in constants() {
        if since <= minor {
            c += &format!("_Static_assert({cn} == {v}, \"{cn}\");\n");
        }
    }
    if minor >= 1 {
        c += &format!(
            "_Static_assert(GW_BACKEND_VTABLE_SIZE_V1_0 == {BACKEND_VTABLE_SIZE_V1_0}, \"GW_BACKEND_VTABLE_SIZE_V1_0\");\n"
        );
    }
    c
}

/// C source without its `/* */` comments.
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        rest = rest[start..].find("*/").map_or("", |end| &rest[start + end + 2..]);
    }
    out.push_str(rest);
    out
}

fn compile(file: &Path, include: &Path, cxx: bool) {
    common::require_tool("gcc");
    let mut cmd = Command::new(if cxx { "g++" } else { "gcc" });
    if cxx {
        cmd.args(["-x", "c++", "-std=c++17"]);
    } else {
        cmd.args(["-std=c11", "-pedantic"]);
    }
    cmd.args(["-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I"]).arg(include).arg(file);
    common::run(&mut cmd);
}

#[test]
fn header_layout_matches_rust() {
    let tmp = tempfile::tempdir().unwrap();
    let include = common::sdk_dir().join("include");
    let file = tmp.path().join("generated_v1_1.c");
    std::fs::write(&file, generated_checks(ABI_MINOR)).unwrap();
    compile(&file, &include, false);
    compile(&common::sdk_dir().join("tests/c/layout.c"), &include, false);
}

#[test]
fn frozen_1_0_header_is_a_prefix_of_the_current_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let include = common::sdk_dir().join("abi/v1.0");
    let file = tmp.path().join("generated_v1_0.c");
    std::fs::write(&file, generated_checks(0)).unwrap();
    compile(&file, &include, false);
    let text = std::fs::read_to_string(include.join("gateway_plugin.h")).unwrap();
    // Nothing of 1.1 may leak into the frozen header.
    let code = strip_comments(&text);
    for later in ["zero", "extents", "cache", "gw_extent", "CAN_ZERO", "CAN_EXTENTS", "CAN_CACHE", "FAST_ONLY"] {
        assert!(!code.contains(later), "the frozen 1.0 header mentions `{later}` outside comments");
    }
    assert_eq!(BACKEND_VTABLE_SIZE_V1_0, 72);
}

#[test]
fn headers_compile_as_c_and_cxx() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("use.c");
    std::fs::write(&file, "#include \"gateway_plugin.h\"\nint gw_header_compiles;\n").unwrap();
    for dir in ["include", "abi/v1.0"] {
        let include = common::sdk_dir().join(dir);
        compile(&file, &include, false);
        compile(&file, &include, true);
    }
}

/// abi.rs's `const _: () = { assert!(...) }` block, mirrored in tests/c/layout.c.
#[test]
fn layout_c_mirrors_every_assertion_of_abi_rs() {
    let abi = std::fs::read_to_string(common::sdk_dir().join("src/abi.rs")).unwrap();
    let layout_c = std::fs::read_to_string(common::sdk_dir().join("tests/c/layout.c")).unwrap();
    let block = abi.split("const _: () = {").nth(1).expect("abi.rs has a layout assertion block");
    let block = &block[..block.find("};").expect("end of the block")];
    let mut checked = 0;
    for clause in block.split("&&").flat_map(|s| s.split("assert!(")) {
        let clause = clause.trim().trim_end_matches(';').trim().trim_end_matches(')').trim();
        let Some((lhs, rhs)) = clause.split_once("==") else { continue };
        let (lhs, rhs) = (lhs.trim(), rhs.trim());
        let want = if let Some(args) = lhs.strip_prefix("offset_of!(") {
            let (ty, field) = args.trim_end_matches(')').split_once(',').unwrap();
            format!("offsetof({}, {}) == {rhs}", c_name(ty.trim()), field.trim())
        } else if let Some(ty) = lhs.strip_prefix("size_of::<").and_then(|s| s.strip_suffix(">()")) {
            format!("sizeof({}) == {rhs}", c_name(ty))
        } else if lhs == "BACKEND_VTABLE_SIZE_V1_0" {
            format!("GW_BACKEND_VTABLE_SIZE_V1_0 == {rhs}")
        } else {
            panic!("layout assertion in abi.rs this test does not understand: `{clause}`");
        };
        assert!(layout_c.contains(&want), "tests/c/layout.c lacks `{want}` (abi.rs asserts `{clause}`)");
        checked += 1;
    }
    assert!(checked >= 45, "only {checked} assertions found in abi.rs's layout block");
}

/// Every `pub struct` (with its fields) and `pub const` of abi.rs is covered above, and named
/// in the C header.
#[test]
fn every_rust_item_is_covered() {
    let abi = std::fs::read_to_string(common::sdk_dir().join("src/abi.rs")).unwrap();
    let header = std::fs::read_to_string(common::sdk_dir().join("include/gateway_plugin.h")).unwrap();
    let layouts = layouts();
    let mut structs = BTreeSet::new();
    let mut lines = abi.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("pub struct ").and_then(|r| r.strip_suffix(" {")) else { continue };
        structs.insert(name.to_owned());
        let layout = layouts.iter().find(|l| l.rust == name).unwrap_or_else(|| panic!("{name}: no layout check"));
        let mut fields = Vec::new();
        for l in lines.by_ref() {
            if l == "}" {
                break;
            }
            if let Some(f) = l.strip_prefix("    pub ").and_then(|r| r.split_once(':')).map(|(f, _)| f) {
                fields.push(f.to_owned());
            }
        }
        let covered: Vec<String> = layout.fields.iter().map(|f| f.0.to_owned()).collect();
        assert_eq!(fields, covered, "{name}: the fields in abi.rs and in this test differ");
        let cn = c_name(name);
        assert!(header.contains(&format!("}} {cn};")), "the C header has no `{cn}`");
    }
    assert_eq!(structs.len(), layouts.len(), "structures: {structs:?}");
    let consts = constants();
    for line in abi.lines() {
        let Some(rest) = line.strip_prefix("pub const ") else { continue };
        let name = rest.split(':').next().unwrap().trim();
        let c_equiv = match name {
            "ABI_MINOR" | "ENTRY_SYMBOL" | "ENTRY_PREFIX" | "BACKEND_VTABLE_SIZE_V1_0" => format!("GW_{name}"),
            _ => consts.iter().find(|c| c.0 == name).unwrap_or_else(|| panic!("constant {name}: no check")).1.clone(),
        };
        assert!(header.contains(&format!("#define {c_equiv} ")), "the C header has no `#define {c_equiv}`");
    }
    let sym = std::str::from_utf8(&ENTRY_SYMBOL[..ENTRY_SYMBOL.len() - 1]).unwrap();
    assert!(header.contains(&format!("#define GW_ENTRY_SYMBOL \"{sym}\"")));
    assert!(header.contains(&format!("#define GW_ENTRY_PREFIX \"{ENTRY_PREFIX}\"")));
}
