//! The block backend on a real block device (a loop device over a 128 MiB sparse file):
//! the export takes the device's size, `nbdinfo` shows trim and zero support, qemu-io
//! pattern writes (plain, FUA, write-zeroes with and without unmap) read back right, an
//! `nbdcopy` round trip of random data matches byte for byte, and trims reach the device
//! (the backing file gives the space back).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use gateway_tests::{assert_same, pattern, qemu_io_ok, require_tool, run, Gateway};
use serde_json::Value;

const SIZE: u64 = 128 << 20;

/// A loop device, detached when dropped (also when the test fails).
struct Loop {
    dev: String,
}

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup").args(["--find", "--show"]).arg(file).output().unwrap();
        assert!(
            out.status.success(),
            "losetup --find --show {} failed ({}): {}; this test needs root and /dev/loop*",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        Loop { dev }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn block_device_export() {
    require_tool("losetup");
    require_tool("qemu-io");
    require_tool("nbdcopy");
    require_tool("nbdinfo");
    let dir = tempfile::tempdir().unwrap();
    let backing: PathBuf = dir.path().join("backing.img");
    std::fs::File::create(&backing).unwrap().set_len(SIZE).unwrap();
    let lo = Loop::attach(&backing);
    let cfg = format!("[[export]]\nname = \"blk\"\n[export.backend]\ntype = \"block\"\npath = \"{}\"\n", lo.dev);
    let mut g = Gateway::start(&cfg).unwrap();
    let uri = g.uri("blk");

    let out = run(Command::new("nbdinfo").args(["--json", "--no-content", &uri])).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], SIZE, "{e}");
    assert_eq!(e["is_read_only"], false, "{e}");
    for flag in ["can_trim", "can_zero", "can_flush", "can_fua", "can_multi_conn"] {
        assert_eq!(e[flag], true, "{flag}: {e}");
    }

    // Pattern I/O, including the last bytes of the device.
    qemu_io_ok(
        &uri,
        false,
        &[
            "write -P 0xab 0 1M",
            "write -f -P 0xcd 1M 1M",
            "write -P 0x33 127M 1M",
            "write -P 0x44 5M 1M",
            "write -P 0x55 6M 1M",
        ],
    );
    qemu_io_ok(&uri, false, &["write -z 5M 1M", "write -z -u 6M 1M", "write -f -P 0x66 8191k 1k", "flush"]);
    let text = qemu_io_ok(
        &uri,
        false,
        &[
            "read -P 0xab 0 1M",
            "read -P 0xcd 1M 1M",
            "read -P 0x33 127M 1M",
            "read -P 0 5M 2M",
            "read -P 0x66 8191k 1k",
        ],
    );
    assert_eq!(text.matches("read ").count(), 5, "{text}");
    // What the device holds is what was written: check through the loop device directly.
    let dev = std::fs::read(&lo.dev).unwrap();
    assert_eq!(dev.len() as u64, SIZE);
    assert!(dev[..1 << 20].iter().all(|&b| b == 0xab));
    assert!(dev[(127 << 20)..].iter().all(|&b| b == 0x33));
    drop(dev);

    // nbdcopy round trip of random data.
    let src = dir.path().join("src.img");
    let data = pattern(4242, SIZE as usize);
    std::fs::write(&src, &data).unwrap();
    run(Command::new("timeout").args(["120", "nbdcopy", "--connections=4", "--flush"]).arg(&src).arg(&uri)).unwrap();
    let out = dir.path().join("out.img");
    run(Command::new("timeout").args(["120", "nbdcopy", "--connections=4"]).arg(&uri).arg(&out)).unwrap();
    assert_same("nbdcopy round trip", &std::fs::read(&out).unwrap(), &data);
    let full = allocated(&backing);
    assert!(full >= SIZE - (1 << 20), "backing file only {full} bytes allocated after a full write");

    // Trim reaches the device: the loop driver punches a hole in the backing file, which
    // gives the space back. Zeroing (with or without unmap) over the random data reads back
    // as zeroes, and data next to it is untouched.
    qemu_io_ok(&uri, false, &["discard 0 32M", "write -z -u 32M 16M", "write -z 48M 16M", "flush"]);
    let after = allocated(&backing);
    assert!(after <= full - (30 << 20), "trim freed too little: {full} -> {after} bytes allocated");
    qemu_io_ok(&uri, false, &["read -P 0 32M 32M"]);
    let mut got = vec![0u8; 1 << 20];
    let f = std::fs::File::open(&lo.dev).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut got, 64 << 20).unwrap();
    assert_same("data after the zeroed range", &got, &data[64 << 20..65 << 20]);
    assert!(g.stop().unwrap().success());
}
