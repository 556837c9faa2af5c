#!/usr/bin/env bash
# Install CRIU 4.2.1 with crctl's patches and make pycriu importable for crctl.
#
#   deploy/install-criu.sh [--python /path/to/bin/python]... [--no-runtime-deps]
#   deploy/install-criu.sh --runtime-deps-only
#
# What it does (idempotent; a second run with the cache present downloads and
# builds nothing):
#   1. apt-installs crctl's run-time tools: nftables iptables iproute2
#      util-linux procps tini (function crctl_install_runtime_deps).
#   2. Fetches the CRIU 4.2.1 source (Debian sid's orig tarball, through a
#      private apt configuration; the system's apt sources are not touched) into
#      the cache.  pycriu is generated from it, so this always happens.
#   3. Builds CRIU 4.2.1 from that source with the patches in
#      deploy/criu-patches/ (applied in name order; see the README there) and
#      installs it as /usr/local/sbin/criu.  The build is cached under a key
#      made of the version and the patches' sha256: a changed patch set, or an
#      unpatched build left by an older version of this script, is rebuilt once.
#      Neither a distribution package nor another criu will do: they lack the
#      patches.  Ends with `criu check`, which must say "Looks good", and checks
#      that the `criu` on PATH is this build.
#   4. For every --python interpreter: generates pycriu's protobuf modules with
#      that interpreter's grpc_tools.protoc (grpcio-tools must be installed
#      there), stages the package in the cache and writes crctl-pycriu.pth
#      into the interpreter's site-packages; then checks the import.
#
# Cache: ${CRCTL_CACHE_DIR:-/var/cache/crctl}; log: <cache>/install-criu.log.
#
# The file can also be sourced (e.g. by deploy/setup.sh) to get the functions
# without running anything; note that sourcing enables `set -Eeuo pipefail`.

set -Eeuo pipefail

# CRIU 4.2 is the first release that dumps INET sockets on kernels >= 6.16 (which restrict
# SO_PASSCRED/SO_PASSSEC to unix sockets: 4.1.x fails with "Can't get 1:16 opt", criu#2705).
CRIU_VERSION=4.2.1
CRIU_SUITE=sid
CRIU_DEB_VERSION=4.2.1-1
CRIU_ORIG_TARBALL=criu_${CRIU_VERSION}.orig.tar.xz
# Same value as sid's Sources index (which apt also checks on download).
CRIU_ORIG_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
DEBIAN_MIRROR=http://deb.debian.org/debian
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
CRIU_INSTALL_PATH=/usr/local/sbin/criu
CRIU_PATCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/criu-patches
PYCRIU_STAGE_REV=1

# tini: the root-owned PID 1 of a rank whose command runs as another user.
CRCTL_RUNTIME_PACKAGES=(nftables iptables iproute2 util-linux procps tini)
# Build dependencies, all from Debian 12 (see FINDINGS 3), plus the compiler.
CRIU_BUILD_PACKAGES=(gcc make libc6-dev pkgconf patch
    libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
    libcap-dev libnl-3-dev libnet1-dev libnftables-dev libbsd-dev
    libgnutls28-dev python3-protobuf uuid-dev libaio-dev)

CACHE=${CRCTL_CACHE_DIR:-/var/cache/crctl}
CRIU_CACHE=$CACHE/criu-$CRIU_VERSION
LOG=$CACHE/install-criu.log
APT_UPDATED=0

# ---------------------------------------------------------------- helpers --

say() { echo "install-criu: $*"; }

log_tail() {
    if [[ -s ${LOG:-} ]]; then
        echo "install-criu: ---- last lines of $LOG ----" >&2
        tail -n 40 "$LOG" >&2
        echo "install-criu: ----" >&2
    fi
}

die() {
    echo "install-criu: ERROR: $*" >&2
    exit 1
}

# die_log MESSAGE: die and show the end of this run's log.
die_log() {
    echo "install-criu: ERROR: $*" >&2
    log_tail
    exit 1
}

on_err() {
    # Report once, from the main shell (command substitutions inherit the trap).
    [[ $BASHPID == "$$" ]] || return 0
    echo "install-criu: ERROR: command failed (line $1): $2" >&2
    log_tail
}

# One log per run (the previous one is kept as .1).
log_init() {
    mkdir -p "$CACHE"
    if [[ -z ${_CRCTL_LOG_STARTED:-} ]]; then
        if [[ -f $LOG ]]; then mv -f "$LOG" "$LOG.1"; fi
        echo "==== $(date -u '+%F %T') install-criu $*" >"$LOG"
        _CRCTL_LOG_STARTED=1
    fi
}

# run_logged DESCRIPTION CMD...: run CMD with its output in the log.
run_logged() {
    local what=$1
    shift
    echo "+ $*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 || die_log "$what failed (exit $?); full log: $LOG"
}

# in_dir DIR CMD...: run CMD in DIR.
in_dir() { (cd "$1" && shift && "$@"); }

require_root() {
    [[ $EUID -eq 0 ]] || die "must run as root (installs packages and $CRIU_INSTALL_PATH)"
}

# ------------------------------------------------------------------- apt --

apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get -y -q \
        -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3 "$@"
}

# The system's package lists need refreshing if absent or older than a day.
apt_lists_stale() {
    local newest
    newest=$(find /var/lib/apt/lists -maxdepth 1 -type f \
        \( -name '*Release' -o -name '*InRelease' \) -mmin -1440 2>/dev/null | head -n 1)
    [[ -z $newest ]] && return 0
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || return 0
    return 1
}

apt_update_once() {
    [[ $APT_UPDATED == 1 ]] && return 0
    say "apt-get update"
    run_logged "apt-get update" apt_get update
    APT_UPDATED=1
}

pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

# apt_install PKG...: install those not installed yet (nothing to do = no apt).
apt_install() {
    local missing=() p
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log_init
    if apt_lists_stale; then apt_update_once; fi
    say "apt-get install ${missing[*]}"
    echo "+ apt-get install ${missing[*]}" >>"$LOG"
    if ! apt_get install --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1; then
        # Lists may be out of date (404 on .debs): refresh once and retry.
        [[ $APT_UPDATED == 1 ]] && die_log "apt-get install ${missing[*]} failed; full log: $LOG"
        apt_update_once
        run_logged "apt-get install ${missing[*]}" \
            apt_get install --no-install-recommends "${missing[@]}"
    fi
}

# Run-time tools the rest of crctl needs (called by deploy/setup.sh too).
crctl_install_runtime_deps() {
    require_root
    log_init
    apt_install "${CRCTL_RUNTIME_PACKAGES[@]}"
    local tool
    for tool in nft iptables ip nsenter unshare setpriv pkill tini; do
        command -v "$tool" >/dev/null || die "'$tool' not found on PATH after installing ${CRCTL_RUNTIME_PACKAGES[*]}"
    done
    say "run-time tools present (${CRCTL_RUNTIME_PACKAGES[*]})"
}

# ------------------------------------------------------------ criu source --

# apt options for a private deb-src list with private state: the
# system's sources, package lists and package caches are never touched.
suite_apt_opts() {
    local d=$CACHE/apt-$CRIU_SUITE
    SUITE_APT_OPTS=(
        -o Dir::Etc::SourceList="$d/sources.list"
        -o Dir::Etc::SourceParts=/dev/null
        -o Dir::State::Lists="$d/lists"
        -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
    )
}
apt_suite() { suite_apt_opts; apt_get "${SUITE_APT_OPTS[@]}" "$@"; }
apt_cache_suite() { suite_apt_opts; apt-cache "${SUITE_APT_OPTS[@]}" "$@"; }

sha256_ok() {
    [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$CRIU_ORIG_SHA256" ]]
}

fetch_criu_tarball() {
    local tarball=$CRIU_CACHE/$CRIU_ORIG_TARBALL
    sha256_ok "$tarball" && return 0

    say "downloading CRIU $CRIU_VERSION source (Debian $CRIU_SUITE source package)"
    local d=$CACHE/apt-$CRIU_SUITE dl
    mkdir -p "$d/lists/partial" "$CRIU_CACHE"
    local signed=""
    [[ -f $DEBIAN_KEYRING ]] && signed="[signed-by=$DEBIAN_KEYRING] "
    echo "deb-src ${signed}$DEBIAN_MIRROR $CRIU_SUITE main" >"$d/sources.list"
    run_logged "apt-get update (private $CRIU_SUITE deb-src list)" apt_suite update

    dl=$(mktemp -d "$CRIU_CACHE/.download.XXXXXX")
    # Let apt's sandbox user write there (avoids the unsandboxed-download warning).
    if id _apt >/dev/null 2>&1; then chown _apt "$dl"; fi

    local version=$CRIU_DEB_VERSION versions
    versions=$(apt_cache_suite showsrc criu 2>>"$LOG" | sed -n 's/^Version: *//p')
    if ! grep -qxF "$version" <<<"$versions"; then
        # Fall back to another Debian revision of the same upstream release.
        version=$(grep -m1 "^${CRIU_VERSION//./\\.}-" <<<"$versions" || true)
        [[ -n $version ]] || die_log "$CRIU_SUITE's Sources index has no criu $CRIU_VERSION (has: ${versions//$'\n'/ }); full log: $LOG"
    fi
    echo "+ apt-get source --download-only criu=$version" >>"$LOG"
    # The .dsc / debian tarball may 404 on the mirror; only the orig tarball matters.
    (cd "$dl" && apt_suite source --download-only "criu=$version") >>"$LOG" 2>&1 ||
        echo "(apt-get source exited $?; checking for the orig tarball)" >>"$LOG"
    sha256_ok "$dl/$CRIU_ORIG_TARBALL" ||
        die_log "could not download $CRIU_ORIG_TARBALL (missing or wrong sha256); full log: $LOG"
    mv -f "$dl/$CRIU_ORIG_TARBALL" "$tarball"
    chown root: "$tarball"
    # The private index (~20 MB) is only needed for this download.
    rm -rf "$dl" "$d/lists"
}

# Leaves the unpacked tree in $CRIU_CACHE/src (stamp: .unpacked).
ensure_criu_source() {
    local src=$CRIU_CACHE/src
    [[ -f $src/.unpacked ]] && return 0
    fetch_criu_tarball
    apt_install xz-utils
    say "unpacking CRIU $CRIU_VERSION source"
    rm -rf "$src" "$CRIU_CACHE/.unpack"
    mkdir -p "$CRIU_CACHE/.unpack"
    run_logged "unpacking $CRIU_ORIG_TARBALL" \
        tar -xJf "$CRIU_CACHE/$CRIU_ORIG_TARBALL" -C "$CRIU_CACHE/.unpack" --no-same-owner
    [[ -f $CRIU_CACHE/.unpack/criu-$CRIU_VERSION/Makefile ]] ||
        die "unexpected layout in $CRIU_ORIG_TARBALL"
    mv "$CRIU_CACHE/.unpack/criu-$CRIU_VERSION" "$src"
    rmdir "$CRIU_CACHE/.unpack"
    touch "$src/.unpacked"
}

# ------------------------------------------------------------------ criu --

# criu_version BIN: prints "4.1.1" (empty if it does not run).
criu_version() {
    "$1" --version 2>/dev/null | sed -n 's/^Version: *\([0-9][0-9.]*\).*/\1/p' | head -n 1
}

# criu_patches: crctl's patches to CRIU, one path a line, in the order they apply.
criu_patches() {
    compgen -G "$CRIU_PATCH_DIR/*.patch" | LC_ALL=C sort || true
}

# criu_build_key: names a build: the version and the sha256 of the patch set
# (names and contents), e.g. 4.2.1+crctl.0123456789abcdef.
criu_build_key() {
    local sum p
    sum=$({
        echo "$CRIU_VERSION"
        while IFS= read -r p; do
            basename "$p"
            cat "$p"
        done < <(criu_patches)
    } | sha256sum | cut -c1-16)
    echo "$CRIU_VERSION+crctl.$sum"
}

# The cached build is $CRIU_CACHE/bin/criu; bin/.built holds its key (an
# older version of this script left it empty: that build is unpatched).
cached_build_current() {
    [[ -x $CRIU_CACHE/bin/criu && -f $CRIU_CACHE/bin/.built &&
        $(cat "$CRIU_CACHE/bin/.built") == "$(criu_build_key)" ]]
}

# Builds in a fresh unpack ($CRIU_CACHE/build), so that the shared source tree
# in $CRIU_CACHE/src (pycriu is generated from it) stays as released.
build_criu() {
    cached_build_current && return 0
    local key build=$CRIU_CACHE/build bin=$CRIU_CACHE/bin/criu p
    key=$(criu_build_key)
    fetch_criu_tarball
    apt_install xz-utils "${CRIU_BUILD_PACKAGES[@]}"
    say "building CRIU $key (make criu; log: $LOG)"
    local t0=$SECONDS
    rm -rf "$build"
    mkdir -p "$build"
    run_logged "unpacking $CRIU_ORIG_TARBALL" \
        tar -xJf "$CRIU_CACHE/$CRIU_ORIG_TARBALL" -C "$build" --strip-components=1 --no-same-owner
    while IFS= read -r p; do
        say "applying $(basename "$p")"
        run_logged "applying $p" patch -d "$build" -p1 --batch --forward -i "$p"
    done < <(criu_patches)
    run_logged "make criu" make -C "$build" -j"$(nproc)" criu
    mkdir -p "$CRIU_CACHE/bin"
    rm -f "$CRIU_CACHE/bin/.built"
    install -m 0755 "$build/criu/criu" "$bin"
    echo "$key" >"$CRIU_CACHE/bin/.built"
    rm -rf "$build"
    say "built CRIU in $((SECONDS - t0)) s"
}

install_cached_criu() {
    # The build libraries' run-time parts must be there (no-op when installed).
    apt_install "${CRIU_BUILD_PACKAGES[@]}"
    if ! cmp -s "$CRIU_CACHE/bin/criu" "$CRIU_INSTALL_PATH"; then
        say "installing $CRIU_INSTALL_PATH (cached build $(cat "$CRIU_CACHE/bin/.built"))"
        # install(1) unlinks the old file first: running criu processes keep theirs.
        install -D -m 0755 "$CRIU_CACHE/bin/criu" "$CRIU_INSTALL_PATH"
    fi
}

ensure_criu() {
    build_criu
    install_cached_criu
}

final_criu_check() {
    local cur v out
    cur=$(command -v criu || true)
    [[ -n $cur ]] || die "no 'criu' on PATH (is $(dirname "$CRIU_INSTALL_PATH") in PATH? PATH=$PATH)"
    cmp -s "$cur" "$CRIU_CACHE/bin/criu" ||
        die "'criu' on PATH is $cur, not crctl's patched build ($CRIU_INSTALL_PATH): put $(dirname "$CRIU_INSTALL_PATH") first in PATH or remove $cur"
    v=$(criu_version "$cur")
    echo "+ $cur check" >>"$LOG"
    if ! out=$("$cur" check 2>&1) || ! grep -q "Looks good" <<<"$out"; then
        echo "$out" >>"$LOG"
        die_log "'$cur check' failed: CRIU $v cannot checkpoint on this kernel/config:
$out"
    fi
    say "criu $v ($(cat "$CRIU_CACHE/bin/.built")) at $cur: criu check: Looks good."
}

# ---------------------------------------------------------------- pycriu --

# ensure_pycriu PYTHON: stage pycriu for that interpreter and add a .pth.
ensure_pycriu() {
    local py=$1
    [[ -x $py ]] || py=$(command -v "$py" || true)
    [[ -n $py && -x $py ]] || die "--python $1: not an executable interpreter"

    local info
    info=$(cd / && "$py" - <<'EOF' 2>>"$LOG"
import sysconfig
from importlib import metadata
def v(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""
try:
    import grpc_tools.protoc  # noqa: F401
    gt = v("grpcio-tools")
except ImportError:
    gt = ""
print(gt, v("protobuf"), sysconfig.get_paths()["purelib"], sep="\n")
EOF
) || die_log "cannot run $py"
    local gt_ver pb_ver purelib
    { read -r gt_ver; read -r pb_ver; read -r purelib; } <<<"$info"
    [[ -n $gt_ver ]] || die "grpcio-tools is not installed for $py (pycriu's protobuf modules are generated with its protoc).
Install it first, e.g.:  $py -m pip install 'protobuf>=7,<8' 'grpcio-tools>=1.85'"
    [[ -n $pb_ver ]] || die "protobuf is not installed for $py; install it first: $py -m pip install 'protobuf>=7,<8'"

    # Generated code pins the protobuf runtime it was made for: key on both
    # (and on PYCRIU_STAGE_REV, bumped whenever generate_pycriu changes).
    local stage=$CRIU_CACHE/python/r$PYCRIU_STAGE_REV.grpcio-tools-$gt_ver.protobuf-$pb_ver
    local fresh=0
    if [[ ! -f $stage/.complete ]]; then
        ensure_criu_source
        say "generating pycriu for $py (grpcio-tools $gt_ver, protobuf $pb_ver)"
        generate_pycriu "$py" "$stage"
        fresh=1
    fi

    local pth=$purelib/crctl-pycriu.pth
    if [[ ! -f $pth || $(cat "$pth") != "$stage" ]]; then
        mkdir -p "$purelib"
        echo "$stage" >"$pth"
        say "wrote $pth"
    fi
    local out
    if ! out=$(verify_pycriu "$py" "$stage"); then
        # A staging that never worked is not worth keeping.
        [[ $fresh == 1 ]] && rm -rf "$stage"
        die "pycriu does not work for $py:
$out"
    fi
    say "$py: $out"
}

# generate_pycriu PYTHON STAGE: what lib/pycriu/Makefile and
# lib/pycriu/images/Makefile do upstream, with grpc_tools.protoc as protoc.
generate_pycriu() {
    local py=$1 stage=$2 src=$CRIU_CACHE/src tmp inc
    mkdir -p "$CRIU_CACHE/python"
    tmp=$(mktemp -d "$CRIU_CACHE/python/.gen.XXXXXX")
    # The package's hand-written modules (lib/pycriu/*.py, images/*.py).
    mkdir -p "$tmp/pycriu/images"
    cp "$src"/lib/pycriu/*.py "$tmp/pycriu/"
    cp "$src"/lib/pycriu/images/*.py "$tmp/pycriu/images/"

    # grpc_tools' bundled well-known protos come first, so
    # google/protobuf/descriptor.proto (imported by opts.proto) resolves to
    # them instead of images/google/..., a symlink into /usr/include.
    inc=$(cd / && "$py" -c 'import os, grpc_tools; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')

    local protos=() f m
    while IFS= read -r f; do
        [[ $f == images/rpc.proto ]] || protos+=("$f")
    done < <(cd "$src" && printf '%s\n' images/*.proto | LC_ALL=C sort)
    [[ ${#protos[@]} -gt 0 ]] || die "no images/*.proto in $src"

    # rpc_pb2.py  (lib/pycriu/Makefile)
    run_logged "protoc rpc.proto" in_dir "$src" \
        "$py" -m grpc_tools.protoc -I"$inc" -Iimages/ --python_out="$tmp/pycriu" images/rpc.proto
    # images/*_pb2.py  (lib/pycriu/images/Makefile, target "images")
    run_logged "protoc images/*.proto" in_dir "$src" \
        "$py" -m grpc_tools.protoc -I"$inc" -Iimages/ --python_out="$tmp/pycriu/images" "${protos[@]}"
    # images/magic.py
    run_logged "magic-gen.py" in_dir "$src" \
        "$py" scripts/magic-gen.py criu/include/magic.h "$tmp/pycriu/images/magic.py"
    # images/pb.py: every image module but opts_pb2
    {
        echo "# Autogenerated. Do not edit!"
        for f in "${protos[@]}"; do
            m=$(basename "$f" .proto)
            m=${m//-/_}_pb2
            [[ $m == opts_pb2 ]] || echo "from .$m import *"
        done
    } >"$tmp/pycriu/images/pb.py"
    # version.py
    echo "__version__ = '$CRIU_VERSION'" >"$tmp/pycriu/version.py"
    patch_pb2dict "$tmp/pycriu/images/pb2dict.py"

    for f in "${protos[@]}"; do
        m=$(basename "$f" .proto)
        [[ -f $tmp/pycriu/images/${m//-/_}_pb2.py ]] || die_log "protoc did not generate ${m//-/_}_pb2.py"
    done
    [[ -f $tmp/pycriu/rpc_pb2.py ]] || die_log "protoc did not generate rpc_pb2.py"

    run_logged "byte-compiling pycriu" "$py" -m compileall -q "$tmp/pycriu"
    touch "$tmp/.complete"
    rm -rf "$stage"
    mv "$tmp" "$stage"
    chmod 0755 "$stage"
}

# protobuf 7 removed FieldDescriptor.label, which CRIU 4.1.1's pb2dict.py
# tests in pb2dict() and dict2pb() (fixed upstream after 4.1.1, criu PR #3008).
# Rewrite exactly those two tests to use is_repeated when it is available.
patch_pb2dict() {
    local f=$1 old='field.label == FD.LABEL_REPEATED' n
    # CRIU >= 4.2 ships its own check (_is_repeated); nothing to patch then.
    grep -q '^def _is_repeated' "$f" && return 0
    n=$(grep -cF "$old" "$f" || true)
    [[ $n == 2 ]] || die "$f: expected 2 uses of '$old', found $n (CRIU source changed? revisit patch_pb2dict)"
    sed -i "s/field\.label == FD\.LABEL_REPEATED/_crctl_is_repeated(field)/" "$f"
    cat >>"$f" <<'EOF'


# Added by crctl's deploy/install-criu.sh: protobuf >= 7 has no
# FieldDescriptor.label; older releases may lack is_repeated.
def _crctl_is_repeated(field):
    if hasattr(field, "is_repeated"):
        return bool(field.is_repeated)
    return field.label == FD.LABEL_REPEATED
EOF
}

# verify_pycriu PYTHON STAGE: import it as crctl will, round-trip images and
# run CHECK through `criu swrk`; prints a summary or the error, fails on error.
verify_pycriu() {
    local py=$1 stage=$2 criu_bin
    criu_bin=$(command -v criu || true)
    (cd / && "$py" - "$stage" "$criu_bin") <<'EOF' 2>&1
import io, os, sys
stage, criu_bin = sys.argv[1], sys.argv[2]
import google.protobuf
import pycriu
from pycriu import rpc_pb2
from pycriu import images
import pycriu.images.pb
where = os.path.realpath(pycriu.__file__)
if not where.startswith(os.path.realpath(stage) + os.sep):
    sys.exit("pycriu is imported from %s, not from %s: another pycriu shadows it" % (where, stage))
img = {"magic": "INVENTORY", "entries": [{"img_version": 2, "fdinfo_per_id": True}]}
buf = io.BytesIO()
images.dump(img, buf)
back = images.load(io.BytesIO(buf.getvalue()))
assert back["magic"] == "INVENTORY" and back["entries"][0]["img_version"] == 2, back
# A files.img with a TCP socket (repeated address fields, as crctl rewrites them).
from pycriu.images import pb, pb2dict
fe = pb.file_entry(type=pb.INETSK, id=1)
sk = fe.isk
sk.id, sk.ino, sk.family, sk.type, sk.proto, sk.state = 1, 2, 2, 1, 6, 1
sk.src_port, sk.dst_port, sk.flags, sk.backlog = 40000, 5000, 2, 0
sk.src_addr.append(0x0100007F)
sk.dst_addr.append(0x0200007F)
for k in ("uid", "euid", "signum", "pid_type", "pid"):
    setattr(sk.fown, k, 0)
for k in ("so_sndbuf", "so_rcvbuf", "so_snd_tmo_sec", "so_snd_tmo_usec",
          "so_rcv_tmo_sec", "so_rcv_tmo_usec"):
    setattr(sk.opts, k, 0)
for pretty in (False, True):
    files = {"magic": "FILES", "entries": [pb2dict.pb2dict(fe, pretty)]}
    back = images.loads(images.dumps(files), pretty)
    again = pb.file_entry()
    pb2dict.dict2pb(back["entries"][0], again)
    assert again == fe, (pretty, back)
assert images.loads(images.dumps(files), True)["entries"][0]["isk"]["src_addr"] == ["127.0.0.1"]
req = rpc_pb2.criu_req(type=rpc_pb2.CHECK)
assert rpc_pb2.criu_req.FromString(req.SerializeToString()).type == rpc_pb2.CHECK
rpc_check = ""
if criu_bin:
    # CHECK over `criu swrk`.  Not pycriu.criu.check(): it sends no opts, and
    # CRIU 4.1.1's service then crashes (NULL opts in setup_opts_from_req).
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        c = pycriu.criu()
        c.use_binary(criu_bin)
        req = rpc_pb2.criu_req(type=rpc_pb2.CHECK)
        req.opts.images_dir_fd = os.open(d, os.O_DIRECTORY)
        req.opts.log_file = "check.log"
        resp = c._send_req_and_recv_resp(req)
        os.close(req.opts.images_dir_fd)
        if not resp.success:
            log = open(os.path.join(d, "check.log")).read()[-2000:] if os.path.exists(os.path.join(d, "check.log")) else ""
            sys.exit("CHECK over criu swrk failed (cr_errno %d):\n%s" % (resp.cr_errno, log))
    rpc_check = ", CHECK via %s swrk" % criu_bin
print("pycriu %s OK (protobuf %s, image round-trip%s)" % (pycriu.__version__, google.protobuf.__version__, rpc_check))
EOF
}

# ------------------------------------------------------------------- main --

usage() {
    sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
    local pythons=() runtime_deps=1 criu=1 argv=("$@")
    while [[ $# -gt 0 ]]; do
        case $1 in
            --python) [[ $# -ge 2 ]] || die "--python needs an interpreter path"
                      pythons+=("$2"); shift 2 ;;
            --python=*) pythons+=("${1#--python=}"); shift ;;
            --no-runtime-deps) runtime_deps=0; shift ;;
            --runtime-deps-only) criu=0; shift ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
    done

    local py
    for py in "${pythons[@]}"; do
        [[ -x $py ]] || command -v "$py" >/dev/null ||
            die "--python $py: not an executable interpreter"
    done
    require_root
    trap 'on_err $LINENO "$BASH_COMMAND"' ERR
    # One run at a time per cache (CI jobs may share a machine).
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
    log_init "${argv[@]}"

    local t0=$SECONDS
    if [[ $runtime_deps == 1 ]]; then crctl_install_runtime_deps; fi
    if [[ $criu == 1 ]]; then
        ensure_criu_source
        ensure_criu
        final_criu_check
        for py in "${pythons[@]}"; do
            ensure_pycriu "$py"
        done
    fi
    say "done in $((SECONDS - t0)) s"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
