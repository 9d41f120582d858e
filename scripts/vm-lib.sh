# shellcheck shell=bash
# Helpers for scripts/vm-test: host tool installation, the cached guest
# kernel + initramfs, and running the VM.  Sourced, not executed.
#
# The guest is built only from Debian packages fetched with `apt-get download`
# and unpacked with `dpkg-deb -x` (nothing is installed on the host except the
# host-side tools): the distribution kernel (vmlinuz plus the nbd, e1000 and
# ext4 modules and their dependencies), busybox-static, nbd-client and
# e2fsprogs' mke2fs/e2fsck with the shared libraries `ldd` lists for them.
#
# Layout under $VM_DIR (default <repo>/target/vm, git-ignored):
#   debs/           downloaded .deb files, reused while the versions match
#   cache/<key>/    vmlinuz, base.cpio.gz, manifest.txt; <key> hashes the
#                   package versions and this file, so either change rebuilds
#   runs/<id>/      one directory per test run (boot log, initrd, gateway data);
#                   removed after a passing run unless --keep

VM_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$VM_LIB_DIR/.." && pwd)
VM_DIR=${VM_TEST_DIR:-$REPO_ROOT/target/vm}

# Kernel modules the guest needs (dependencies are added from each module's
# .modinfo "depends=" list).  crc32c_generic is not a declared dependency of
# ext4 (ext4 asks the crypto API for "crc32c" at mount time), so it is listed.
VM_MODULES=(e1000 nbd crc32c_generic ext4)
# Dynamically linked programs copied into the guest: package:path-in-package.
VM_PROGRAMS=(nbd-client:sbin/nbd-client e2fsprogs:sbin/mke2fs e2fsprogs:sbin/e2fsck)

log() { printf 'vm-test: %s\n' "$*" >&2; }
die() { printf 'vm-test: ERROR: %s\n' "$*" >&2; exit 2; }

# port_in_use PORT: something listens on it.  ss avoids connecting (a probe
# connection would show up as a failed handshake in the server's log).
port_in_use() {
    if command -v ss >/dev/null; then
        [[ -n $(ss -Hltn "sport = :$1") ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# --- host tools ------------------------------------------------------------

apt_updated=
apt_update_once() {
    [[ -n $apt_updated ]] && return 0
    log "apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
    apt_updated=1
}

# ensure_host_tools [--host-verify]: install what is missing when root.
ensure_host_tools() {
    local want_verify=${1:-}
    local -A need=()  # package -> 1
    local cmd
    local -A pkg_of=(
        [socat]=socat [cpio]=cpio [gzip]=gzip [timeout]=coreutils
        [dpkg-deb]=dpkg [apt-get]=apt [ldd]=libc-bin [flock]=util-linux
        [sha256sum]=coreutils
    )
    for cmd in "${!pkg_of[@]}"; do
        command -v "$cmd" >/dev/null || need[${pkg_of[$cmd]}]=1
    done
    if [[ -n $want_verify ]]; then
        command -v nbdcopy >/dev/null || need[libnbd-bin]=1
        command -v debugfs >/dev/null || need[e2fsprogs]=1
        command -v e2fsck >/dev/null || need[e2fsprogs]=1
    fi
    local have_qemu=1
    command -v qemu-system-x86_64 >/dev/null || have_qemu=

    if [[ ${#need[@]} -eq 0 && -n $have_qemu ]]; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        local missing="${!need[*]}"
        [[ -n $have_qemu ]] || missing+=" qemu-system-x86"
        die "missing host packages:${missing:+ }${missing# }; run as root to install them"
    fi

    export DEBIAN_FRONTEND=noninteractive
    if [[ ${#need[@]} -gt 0 ]]; then
        apt_update_once
        log "installing ${!need[*]}"
        apt-get install -y -qq "${!need[@]}" >&2 || die "apt-get install ${!need[*]} failed"
    fi
    if [[ -z $have_qemu ]]; then
        # On bookworm this machine's qemu-utils comes from bookworm-backports,
        # so qemu-system-x86 must come from there too (same qemu version).
        local codename
        codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
        if [[ $codename == bookworm ]]; then
            if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
                log "adding bookworm-backports to /etc/apt/sources.list.d/backports.list"
                echo 'deb http://deb.debian.org/debian bookworm-backports main' \
                    >/etc/apt/sources.list.d/backports.list
                apt_updated=
            fi
            apt_update_once
            log "installing qemu-system-x86 from bookworm-backports"
            apt-get install -y -qq -t bookworm-backports qemu-system-x86 >&2 \
                || die "apt-get install -t bookworm-backports qemu-system-x86 failed"
        else
            apt_update_once
            log "installing qemu-system-x86"
            apt-get install -y -qq qemu-system-x86 >&2 || die "apt-get install qemu-system-x86 failed"
        fi
    fi
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 still missing after install"
}

# --- guest package set -----------------------------------------------------

# candidates PKG...: prints "name version" for each package apt has a
# candidate for (one apt-cache call: it takes a second or more on a busy host).
candidates() {
    apt-cache policy "$@" 2>/dev/null | awk '
        /^[^ ]/ { pkg = $1; sub(/:$/, "", pkg) }
        $1 == "Candidate:" && $2 != "(none)" { print pkg, $2 }'
}

# The versioned kernel package linux-image-amd64 currently points at.
kernel_pkg_name() {
    apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ && !found {print $2; found = 1}'
}

# Library packages (lib*, except libc6 which comes from the host with the
# dynamic loader) that the given packages depend on, transitively.
lib_closure() {
    local -A seen=()
    local todo=("$@") next p
    while [[ ${#todo[@]} -gt 0 ]]; do
        next=()
        for p in $(apt-cache depends --no-recommends --no-suggests --no-conflicts \
                       --no-breaks --no-replaces --no-enhances "${todo[@]}" 2>/dev/null \
                   | awk '$1 ~ /Depends:$/ && $2 ~ /^lib/ {print $2}' | sort -u); do
            [[ $p == libc6 || -n ${seen[$p]:-} ]] && continue
            seen[$p]=1
            next+=("$p")
        done
        todo=("${next[@]}")
    done
    printf '%s\n' "${!seen[@]}" | sort
}

# pin_versions PKG...: sets GUEST_PKGS to "name=version" for each, or dies.
pin_versions() {
    local -A ver=()
    local p v
    while read -r p v; do ver[$p]=$v; done < <(candidates "$@")
    GUEST_PKGS=()
    for p in "$@"; do
        [[ -n ${ver[$p]:-} ]] || die "apt has no candidate version for guest package $p"
        GUEST_PKGS+=("$p=${ver[$p]}")
    done
}

# Sets GUEST_PKGS to the top-level guest packages: the kernel first, then
# the userspace ones.  Their versions (not the libraries') key the cache.
resolve_guest_packages() {
    local kpkg
    kpkg=${VM_KERNEL_PKG:-$(kernel_pkg_name)}
    if [[ -z $kpkg ]]; then
        [[ $(id -u) -eq 0 ]] || die "apt has no package lists (run 'apt-get update' as root)"
        apt_update_once
        kpkg=$(kernel_pkg_name)
    fi
    [[ -n $kpkg ]] || die "cannot resolve the kernel package behind linux-image-amd64 (apt-cache depends linux-image-amd64)"
    pin_versions "$kpkg" busybox-static nbd-client e2fsprogs
}

# download_debs DIR: fetch every GUEST_PKGS .deb into DIR unless already
# there, and print their file names (in no particular order).
download_debs() {
    local dir=$1 _uri file size _hash spec
    local -A spec_of=()
    for spec in "${GUEST_PKGS[@]}"; do spec_of[${spec%%=*}]=$spec; done
    mkdir -p "$dir"
    while read -r _uri file size _hash; do
        spec=${spec_of[${file%%_*}]:-}
        [[ -n $spec ]] || die "unexpected package file $file from apt-get download --print-uris"
        if [[ ! -f $dir/$file || $(stat -c %s "$dir/$file") != "$size" ]]; then
            log "downloading $spec"
            # APT::Sandbox::User=root: the _apt user cannot write into $dir.
            (cd "$dir" && apt-get -q -o APT::Sandbox::User=root download "$spec" >/dev/null) \
                || die "apt-get download $spec failed"
            [[ -f $dir/$file ]] || die "apt-get download $spec did not produce $file"
        fi
        printf '%s\n' "$file"
    done < <(apt-get download --print-uris "${GUEST_PKGS[@]}" 2>/dev/null)
}

# --- initramfs ---------------------------------------------------------------

# Copies kernel module $1 (and its dependencies, first) from module tree $2
# into $3/lib/modules and appends it to the array MOD_ORDER.
declare -A MOD_DONE=()
MOD_ORDER=()
add_module() {
    local m=$1 tree=$2 stage=$3 f deps d
    [[ -n ${MOD_DONE[$m]:-} ]] && return 0
    MOD_DONE[$m]=1
    f=$(find "$tree" -name "${m//[-_]/[-_]}.ko" -print -quit)
    [[ -n $f ]] || die "kernel module $m not found under $tree (compressed modules are not supported)"
    deps=$(tr '\0' '\n' <"$f" | sed -n 's/^depends=//p')
    deps=${deps%%$'\n'*}
    for d in ${deps//,/ }; do
        add_module "$d" "$tree" "$stage"
    done
    cp "$f" "$stage/lib/modules/$m.ko"
    MOD_ORDER+=("$m")
}

# build_base_initramfs OUT_DIR SYSROOT KROOT: writes OUT_DIR/vmlinuz and
# OUT_DIR/base.cpio.gz (everything but /init and /vmtest.conf).
build_base_initramfs() {
    local out=$1 sysroot=$2 kroot=$3
    local stage=$out/stage
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc,lib/modules,lib/x86_64-linux-gnu,lib64,proc,sys,dev,tmp,run,mnt}

    # Kernel and modules.
    local vmlinuz ktree
    vmlinuz=$(find "$kroot/boot" -name 'vmlinuz-*' -print -quit)
    [[ -n $vmlinuz ]] || die "no vmlinuz in the kernel package"
    cp "$vmlinuz" "$out/vmlinuz"
    ktree=$(find "$kroot/lib/modules" -mindepth 1 -maxdepth 1 -type d -print -quit)
    local m
    for m in "${VM_MODULES[@]}"; do add_module "$m" "$ktree/kernel" "$stage"; done
    printf '%s\n' "${MOD_ORDER[@]}" >"$stage/lib/modules/order"

    # busybox and its applet links.
    cp "$sysroot/bin/busybox" "$stage/bin/busybox"
    local applet
    while read -r applet; do
        [[ $applet == */* && $applet != bin/busybox ]] || continue
        ln -sf /bin/busybox "$stage/$applet"
    done < <("$stage/bin/busybox" --list-full)

    # Dynamically linked programs plus the libraries ldd resolves, preferring
    # the libraries unpacked from the downloaded packages.
    local libpath="$sysroot/lib/x86_64-linux-gnu:$sysroot/usr/lib/x86_64-linux-gnu"
    local entry prog lddout name path
    for entry in "${VM_PROGRAMS[@]}"; do
        prog=${entry#*:}
        [[ -f $sysroot/$prog ]] || die "$prog missing from package ${entry%%:*}"
        rm -f "$stage/$prog"
        cp "$sysroot/$prog" "$stage/$prog"
        lddout=$(LD_LIBRARY_PATH=$libpath ldd "$sysroot/$prog") || die "ldd $prog failed"
        if grep -q 'not found' <<<"$lddout"; then
            die "ldd $prog: unresolved libraries:"$'\n'"$lddout"
        fi
        while read -r name path; do
            cp -L "$path" "$stage/lib/x86_64-linux-gnu/$name"
        done < <(awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' <<<"$lddout")
        path=$(awk '$1 ~ /^\/.*ld-linux/ {print $1; exit}' <<<"$lddout")
        [[ -n $path ]] || die "ldd $prog: no dynamic loader listed"
        mkdir -p "$stage/$(dirname "$path")"
        cp -L "$path" "$stage/$path"
    done
    cp "$sysroot/etc/mke2fs.conf" "$stage/etc/mke2fs.conf"
    ln -s /proc/mounts "$stage/etc/mtab"

    (cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
        | cpio --null -o -H newc -R 0:0 --quiet) | gzip -6 >"$out/base.cpio.gz"
    rm -rf "$stage"
}

# ensure_guest_image: sets VM_KERNEL and VM_BASE_CPIO, building them if the
# cache for the current package versions (and this file) is missing.
ensure_guest_image() {
    resolve_guest_packages
    local key
    key=$( { printf '%s\n' "${GUEST_PKGS[@]}"; sha256sum "$VM_LIB_DIR/vm-lib.sh"; } \
           | sha256sum | cut -c1-16)
    local cache=$VM_DIR/cache/$key
    VM_KERNEL=$cache/vmlinuz
    VM_BASE_CPIO=$cache/base.cpio.gz
    mkdir -p "$VM_DIR/cache"
    exec {lockfd}>"$VM_DIR/.lock"
    flock "$lockfd"
    if [[ -f $cache/manifest.txt ]]; then
        exec {lockfd}>&-
        return 0
    fi
    log "building guest image (cache key $key)"
    local t0=$SECONDS debs=() f
    # Add the library packages the programs need, transitively.
    local top=("${GUEST_PKGS[@]}") libs=()
    mapfile -t libs < <(lib_closure nbd-client e2fsprogs)
    pin_versions "${top[@]%%=*}" "${libs[@]}"
    mapfile -t debs < <(download_debs "$VM_DIR/debs")
    [[ ${#debs[@]} -eq ${#GUEST_PKGS[@]} ]] || die "package download failed"
    rm -rf "$VM_DIR"/cache/.build.*  # left by an interrupted build (we hold the lock)
    local tmp
    tmp=$(mktemp -d "$VM_DIR/cache/.build.XXXXXX")
    mkdir -p "$tmp/sysroot" "$tmp/kroot"
    # The kernel package goes to kroot, everything else forms the sysroot.
    for f in "${debs[@]}"; do
        if [[ $f == linux-image-* ]]; then
            dpkg-deb -x "$VM_DIR/debs/$f" "$tmp/kroot"
        else
            dpkg-deb -x "$VM_DIR/debs/$f" "$tmp/sysroot"
        fi
    done
    mkdir -p "$tmp/out"
    build_base_initramfs "$tmp/out" "$tmp/sysroot" "$tmp/kroot"
    {
        printf 'package %s\n' "${GUEST_PKGS[@]}"
        printf 'module %s\n' "${MOD_ORDER[@]}"
    } >"$tmp/out/manifest.txt"
    rm -rf "$cache"
    mv "$tmp/out" "$cache"
    rm -rf "$tmp"
    # Drop caches and .debs that no longer match the current versions.
    find "$VM_DIR/cache" -mindepth 1 -maxdepth 1 ! -name "$key" -exec rm -rf {} +
    local keep=" ${debs[*]} "
    for f in "$VM_DIR"/debs/*.deb; do
        [[ $keep == *" $(basename "$f") "* ]] || rm -f "$f"
    done
    exec {lockfd}>&-
    log "guest image built in $((SECONDS - t0))s: $(du -h "$VM_BASE_CPIO" | cut -f1) initramfs"
}

# make_initrd OUT RUN_STAGE: OUT = base.cpio.gz + a gzip'd cpio of RUN_STAGE
# (the kernel unpacks concatenated archives in order).
make_initrd() {
    local out=$1 stage=$2
    {
        cat "$VM_BASE_CPIO"
        (cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z \
            | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1
    } >"$out"
}

# sq STRING: single-quote STRING for a POSIX shell.
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# run_vm INITRD LOG PORT TIMEOUT: boots the guest with its NBD traffic to
# 10.0.2.100:10809 relayed to 127.0.0.1:PORT, one socat per guest connection.
# Console output goes to LOG; lines starting "VMTEST: " are echoed live.
# Returns qemu's (or timeout's: 124) exit status.  VM_PID is the timeout
# process while it runs, for the caller's cleanup.
VM_PID=
run_vm() {
    local initrd=$1 logf=$2 port=$3 limit=$4
    local -a cmd=(
        timeout --kill-after=10 "$limit"
        qemu-system-x86_64 -accel "${VM_ACCEL:-tcg}" -m 512 -smp 1
        -display none -monitor none -serial stdio -no-reboot
        -kernel "$VM_KERNEL" -initrd "$initrd"
        -append "console=ttyS0 quiet panic=-1"
        -netdev "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:10809-cmd:socat STDIO TCP:127.0.0.1:$port"
        -device "e1000,netdev=n0,romfile="
    )
    { printf '+'; printf ' %q' "${cmd[@]}"; printf '\n'; } >"$logf"
    "${cmd[@]}" </dev/null >>"$logf" 2>&1 &
    VM_PID=$!
    # Follow the log until the VM process is gone (tail then prints the rest).
    # Both run in the background: `wait` lets the caller's signal traps run.
    tail -n +2 -f --pid="$VM_PID" "$logf" | sed -un 's/\r$//; /^VMTEST: /p' >&2 &
    local follower=$! rc=0
    wait "$VM_PID" || rc=$?
    VM_PID=
    wait "$follower" || true
    return "$rc"
}
