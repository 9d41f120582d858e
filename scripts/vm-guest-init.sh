#!/bin/sh
# shellcheck disable=SC2317  # functions are called through run()
# /init of the scripts/vm-test guest: runs as PID 1 under busybox sh.
#
# Connection 1 (/dev/nbd0): mke2fs -t ext4, mount, write files, record their
# sha256 in the guest's RAM (/tmp), unmount, disconnect.
# Connection 2 (/dev/nbd1, since nbd0 may still be tearing down): e2fsck -fn,
# mount, check every checksum and the file list, unmount, disconnect.
# Prints "VMTEST: step ..." as it goes and ends with exactly one
# "VMTEST: RESULT PASS <token>" or "VMTEST: RESULT FAIL <token>: why", then
# powers off.  Settings come from /vmtest.conf (written by scripts/vm-test).

PATH=/sbin:/usr/sbin:/bin:/usr/bin
export PATH
# Debian's busybox sh runs its own applets in preference to files on PATH, so
# the real nbd-client, mke2fs and e2fsck are always called by full path.
NBD_CLIENT=/sbin/nbd-client
MKE2FS=/sbin/mke2fs
E2FSCK=/sbin/e2fsck
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp

TOKEN='unset'
# shellcheck source=/dev/null
. /vmtest.conf  # EXPORT TOKEN SERVER_IP SERVER_PORT BLOCK_SIZE MIN_SIZE DATA_MIB SMALL_FILES

say() { echo "VMTEST: $*"; }

halt_vm() {
    sync
    poweroff -f
    sleep 10
    exit 1  # PID 1 exiting panics the kernel; qemu -no-reboot then exits
}

fail() {
    echo "VMTEST: RESULT FAIL $TOKEN: $*"
    echo "--- last kernel messages ---"
    dmesg | tail -n 20
    halt_vm
}

# run DESCRIPTION COMMAND...: a step that must succeed.
run() {
    desc=$1
    shift
    say "step: $desc [t=$(cut -d' ' -f1 /proc/uptime)s]"
    "$@" || fail "$desc (exit status $?)"
}

load_modules() {
    while read -r m; do
        insmod "/lib/modules/$m.ko" || return 1
    done </lib/modules/order
}

net_up() {
    ip link set lo up &&
        ip link set eth0 up &&
        ip addr add 10.0.2.15/24 dev eth0
}

# connect DEV: attach the export to DEV and check its size.
connect() {
    $NBD_CLIENT "$SERVER_IP" "$SERVER_PORT" "$1" -N "$EXPORT" -b "$BLOCK_SIZE" || return 1
    size=$(blockdev --getsize64 "$1") || return 1
    say "$1 size $size bytes"
    if [ "$size" -lt "$MIN_SIZE" ]; then
        echo "export is $size bytes, need at least $MIN_SIZE"
        return 1
    fi
}

disconnect() {
    $NBD_CLIENT -d "$1"
}

write_files() {
    mkdir -p /mnt/dir/sub || return 1
    # One large file, then overwrite a few blocks in its middle.
    dd if=/dev/urandom of=/mnt/big.bin bs=1M count="$DATA_MIB" 2>/dev/null || return 1
    dd if=/dev/urandom of=/mnt/big.bin bs=4096 seek=100 count=3 conv=notrunc 2>/dev/null || return 1
    # A sparse file: data, a ~40 MiB hole, data.
    dd if=/dev/urandom of=/mnt/sparse.bin bs=4096 count=1 2>/dev/null || return 1
    dd if=/dev/urandom of=/mnt/sparse.bin bs=4096 seek=10000 count=2 conv=notrunc 2>/dev/null || return 1
    # An odd-sized file and many small ones.
    head -c 12345 /dev/urandom >/mnt/dir/odd.bin || return 1
    i=0
    while [ "$i" -lt "$SMALL_FILES" ]; do
        echo "small file $i of run $TOKEN" >"/mnt/dir/sub/small-$i.txt" || return 1
        i=$((i + 1))
    done
    sync
}

# checksums > FILE: sha256 of every regular file under /mnt, sorted by path.
checksums() {
    (cd /mnt && find . -type f | sort | xargs sha256sum)
}

record_sums() {
    checksums >/tmp/sums || return 1
    n=$(wc -l </tmp/sums)
    say "recorded $n checksums"
    [ "$n" -ge 3 ] || return 1
    # For the host-side check in scripts/vm-test.
    sed 's/^/VMTEST-SUM: /' /tmp/sums
}

verify_sums() {
    (cd /mnt && sha256sum -c /tmp/sums) >/tmp/check.out 2>&1
    rc=$?
    grep -v ': OK$' /tmp/check.out
    [ "$rc" -eq 0 ] || return 1
    # Same set of files, no more, no less.
    (cd /mnt && find . -type f | sort) >/tmp/files.now
    sed 's/^[0-9a-f]*  //' /tmp/sums >/tmp/files.then
    if ! cmp -s /tmp/files.then /tmp/files.now; then
        echo "file list differs:"
        diff /tmp/files.then /tmp/files.now
        return 1
    fi
    say "all $(wc -l </tmp/sums) checksums match"
}

fsck_clean() {
    $E2FSCK -fn "$1"
}

main() {
    run "load kernel modules" load_modules
    run "network up" net_up

    run "connect 1 on /dev/nbd0 (export '$EXPORT')" connect /dev/nbd0
    run "mke2fs -t ext4 on /dev/nbd0" $MKE2FS -t ext4 -b 4096 -F -q \
        -E lazy_itable_init=0,lazy_journal_init=0 /dev/nbd0
    run "mount /dev/nbd0" mount -t ext4 /dev/nbd0 /mnt
    run "write files" write_files
    run "record checksums" record_sums
    run "unmount /dev/nbd0" umount /mnt
    run "disconnect /dev/nbd0" disconnect /dev/nbd0

    run "connect 2 on /dev/nbd1" connect /dev/nbd1
    run "e2fsck -fn /dev/nbd1" fsck_clean /dev/nbd1
    run "mount /dev/nbd1" mount -t ext4 /dev/nbd1 /mnt
    run "verify checksums" verify_sums
    run "unmount /dev/nbd1" umount /mnt
    run "disconnect /dev/nbd1" disconnect /dev/nbd1

    say "all steps done [t=$(cut -d' ' -f1 /proc/uptime)s]"
    echo "VMTEST: RESULT PASS $TOKEN"
    halt_vm
}

main
fail "init script fell off the end"
