#!/bin/sh
# Build initium's static /init interpreter from a CPython source tarball.
#
#   build.sh SOURCE WORK OUT JOBS SETUP_LOCAL [CONFIGURE_ARG...]
#
# Driven by packaging/static_python.py, which chooses the arguments and keys
# the cache on them.  Our launcher replaces Programs/python.c (its main()),
# our modules (_initium.c, _selinux_min.c) join Modules/, and SETUP_LOCAL
# lists every extension module that is compiled in; `make python` builds only the interpreter, so no
# shared extension is ever built.  OUT receives the stripped ELF `python`
# and the build logs.
set -eu

source=$1 work=$2 out=$3 jobs=$4 setup=$5
shift 5
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$work" "$out"
tar -xaf "$source" -C "$work" --strip-components=1
cp "$here/launcher.c" "$work/Programs/python.c"
cp "$here/_initium.c" "$here/_selinux_min.c" "$work/Modules/"
cp "$setup" "$work/Modules/Setup.local"
cd "$work"
# getbuildinfo.c stamps __DATE__/__TIME__ into sys.version: GCC takes them
# from SOURCE_DATE_EPOCH, so two builds of the same key are byte-identical.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-0}"
# The build directory is not part of the output either.
export CFLAGS="${CFLAGS:-} -ffile-prefix-map=$work=/cpython"
if ! ./configure "$@" >"$out/configure.log" 2>&1; then
    tail -n 30 "$out/configure.log" >&2
    exit 1
fi
if ! make -j"$jobs" python >"$out/make.log" 2>&1; then
    grep -n -m 20 -i "error" "$out/make.log" >&2 || tail -n 30 "$out/make.log" >&2
    exit 1
fi
strip --strip-all -o "$out/python" python
