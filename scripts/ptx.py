#!/usr/bin/env python3
"""Regenerate (--write) or check (--check) the committed ptx/<module>.ptx.

Compiles every module of kernels/kernels.txt with libnvrtc exactly as build.rs does, so both give
the same bytes:
  - modules: the first word of each non-empty, non-`#` line of kernels/kernels.txt, except
    `dtypes`, in sorted order; source kernels/<module>.cu, program name `<module>.cu`;
  - headers: every kernels/*.cuh and kernels/*.h, given in memory (name = file name), sorted by
    file name;
  - options: the non-empty, non-`#` lines of kernels/nvrtc.flags, trimmed;
  - output: nvrtcGetPTX's buffer with trailing NUL bytes removed, written byte for byte.
NVRTC: $CLCA_NVRTC if set, else .toolchain/cuda/nvidia/cuda_nvrtc/lib/libnvrtc.so.12
(installed by scripts/toolchain.sh).
"""

import argparse
import ctypes
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KDIR = ROOT / "kernels"
PDIR = ROOT / "ptx"
DEFAULT_NVRTC = ROOT / ".toolchain/cuda/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"


def modules() -> list[str]:
    """Module names of kernels/kernels.txt, as build.rs's parse_table (BTreeMap keys)."""
    found = set()
    for line in (KDIR / "kernels.txt").read_text(encoding="utf-8").split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head = line.split()[0]
        if head != "dtypes":
            found.add(head)
    return sorted(found, key=lambda m: m.encode())


def headers() -> list[tuple[bytes, bytes]]:
    """(name, text) of every kernels/*.cuh and *.h, sorted by file name (build.rs sorts paths)."""
    names = sorted(
        (p.name for p in KDIR.iterdir() if p.name.endswith((".cuh", ".h"))),
        key=os.fsencode,
    )
    return [(os.fsencode(n), (KDIR / n).read_bytes()) for n in names]


def flags() -> list[bytes]:
    text = (KDIR / "nvrtc.flags").read_text(encoding="utf-8")
    lines = (line.strip() for line in text.split("\n"))
    return [line.encode() for line in lines if line and not line.startswith("#")]


class Nvrtc:
    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))
        P = ctypes.c_void_p
        cp = ctypes.c_char_p
        cpp = ctypes.POINTER(ctypes.c_char_p)
        sz = ctypes.POINTER(ctypes.c_size_t)
        sigs = {
            "nvrtcCreateProgram": [ctypes.POINTER(P), cp, cp, ctypes.c_int, cpp, cpp],
            "nvrtcCompileProgram": [P, ctypes.c_int, cpp],
            "nvrtcGetProgramLogSize": [P, sz],
            "nvrtcGetProgramLog": [P, ctypes.c_char_p],
            "nvrtcGetPTXSize": [P, sz],
            "nvrtcGetPTX": [P, ctypes.c_char_p],
            "nvrtcDestroyProgram": [ctypes.POINTER(P)],
            "nvrtcVersion": [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)],
        }
        for name, args in sigs.items():
            f = getattr(lib, name)
            f.argtypes = args
            f.restype = ctypes.c_int
        self.lib = lib

    def version(self) -> str:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        return f"{major.value}.{minor.value}"

    def compile(self, name: str, src: bytes, hdrs, opts: list[bytes]) -> bytes:
        lib = self.lib
        n = len(hdrs)
        hdr_src = (ctypes.c_char_p * n)(*(s for _, s in hdrs))
        hdr_name = (ctypes.c_char_p * n)(*(h for h, _ in hdrs))
        copts = (ctypes.c_char_p * len(opts))(*opts)
        prog = ctypes.c_void_p()
        r = lib.nvrtcCreateProgram(ctypes.byref(prog), src, name.encode(), n, hdr_src, hdr_name)
        if r != 0:
            raise RuntimeError(f"nvrtcCreateProgram({name}) returned {r}")
        try:
            rc = lib.nvrtcCompileProgram(prog, len(opts), copts)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(max(size.value, 1))
            lib.nvrtcGetProgramLog(prog, log)
            if rc != 0:
                text = log.raw.rstrip(b"\0").decode(errors="replace")
                raise RuntimeError(f"NVRTC failed on {name} ({rc}):\n{text}")
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, buf)
            return buf.raw.rstrip(b"\0")
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--write", action="store_true", help="rewrite stale ptx/<module>.ptx, remove orphans"
    )
    mode.add_argument("--check", action="store_true", help="exit 1 if any ptx/ file is stale")
    args = ap.parse_args()

    env = os.environ.get("CLCA_NVRTC")
    if env in ("off", "0"):
        print("ptx.py: CLCA_NVRTC is off, but this script needs NVRTC", file=sys.stderr)
        return 2
    path = Path(env) if env else DEFAULT_NVRTC
    if not path.exists():
        print(f"ptx.py: no NVRTC at {path}: run `bash scripts/toolchain.sh`", file=sys.stderr)
        return 2
    nvrtc = Nvrtc(path)
    hdrs, opts = headers(), flags()

    mods = modules()
    stale = []
    for m in mods:
        src = (KDIR / f"{m}.cu").read_bytes()
        ptx = nvrtc.compile(f"{m}.cu", src, hdrs, opts)
        dst = PDIR / f"{m}.ptx"
        if dst.exists() and dst.read_bytes() == ptx:
            continue
        stale.append(dst.relative_to(ROOT))
        if args.write:
            PDIR.mkdir(exist_ok=True)
            dst.write_bytes(ptx)

    # A ptx/*.ptx whose module left the table is stale too (build.rs would ignore it silently).
    for orphan in sorted(set(PDIR.glob("*.ptx")) - {PDIR / f"{m}.ptx" for m in mods}):
        stale.append(orphan.relative_to(ROOT))
        if args.write:
            orphan.unlink()

    what = f"NVRTC {nvrtc.version()} ({path})"
    if args.write:
        print(f"ptx.py: {len(stale)} file(s) rewritten or removed with {what}")
        for s in stale:
            print(f"  {s}")
        return 0
    if stale:
        print(f"ptx.py: stale against {what}:", file=sys.stderr)
        for s in stale:
            print(f"  {s}", file=sys.stderr)
        print("run `python3 scripts/ptx.py --write` and commit ptx/", file=sys.stderr)
        return 1
    print(f"ptx.py: ptx/ matches {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
