"""Lets PyPI's Linux torch wheel import on a machine without its CUDA wheels (link stubs only).

PyPI's torch for Linux x86_64 is the CUDA build: libtorch.so has DT_NEEDED on libtorch_cuda.so,
which needs libcudart, libcublas, libcudnn, libnccl, ... (~3-4 GB of nvidia-* wheels). A CPU test
never calls into them, but the dynamic loader still has to resolve every library and function
(Python loads extensions with RTLD_NOW). This script writes one small stub library per missing
soname into site-packages/nvidia/cu13/lib (a directory on the torch libraries' RPATH); each stub
defines every symbol torch's libraries import and nothing else in the venv or the system
provides, as a function that returns 100 (cudaErrorNoDevice in the runtime API; an error, never
success). With them, torch runs on CPU unchanged and torch.cuda.is_available() is False.

Usage: python torch_cpu_stubs.py   (rewrites the stubs each time; prints what it wrote)
"""

import ctypes.util
import glob
import os
import re
import subprocess
import sys
import sysconfig
import tempfile

SITE = sysconfig.get_paths()["purelib"]
TORCH_LIB = os.path.join(SITE, "torch", "lib")
STUB_DIR = os.path.join(SITE, "nvidia", "cu13", "lib")
SYSTEM = ["c", "m", "dl", "pthread", "rt", "stdc++", "gcc_s"]


def readelf(*args):
    return subprocess.run(["readelf", *args], check=True, capture_output=True, text=True).stdout


def needed(lib):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", readelf("-d", lib))


def dyn_syms(lib, versions=None):
    """(undefined, defined) dynamic symbol names of `lib`, versions stripped; with `versions`
    (a dict), also records the version each undefined reference asks for."""
    und, dfn = set(), set()
    for line in readelf("--dyn-syms", "-W", lib).splitlines():
        f = line.split()
        if len(f) < 8 or not f[0].rstrip(":").isdigit():
            continue
        name, _, version = f[7].partition("@")
        if f[6] == "UND":
            und.add(name)
            if versions is not None and version:
                versions.setdefault(version.split(" ")[0].lstrip("@"), set()).add(name)
        else:
            dfn.add(name)
    return und, dfn


def version_files(lib):
    """Version name -> the library file that must define it (from the verneed section)."""
    out, current = {}, None
    for line in readelf("-V", "-W", lib).splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and current:
            out[m.group(1)] = current
    return out


def system_lib_path(name):
    found = ctypes.util.find_library(name)
    if not found:
        return None
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    m = re.search(r"\s%s \(libc6,x86-64\) => (\S+)" % re.escape(found), out)
    return m.group(1) if m else None


def main():
    libs = sorted(glob.glob(os.path.join(TORCH_LIB, "*.so*")) + glob.glob(os.path.join(SITE, "torch", "_C*.so")))
    if not libs:
        sys.exit(f"torch_cpu_stubs.py: no torch libraries under {TORCH_LIB}")
    present = set(os.listdir(TORCH_LIB))
    # Stubs of an earlier run are rewritten (the torch version may have changed).
    missing = set()
    for lib in libs:
        for n in needed(lib):
            if n in present:
                continue
            if subprocess.run(["sh", "-c", f"ldconfig -p | grep -q '{n} '"]).returncode == 0:
                continue
            missing.add(n)
    # libcaffe2_nvrtc.so (libcuda.so.1) is only dlopen'ed for GPU code generation.
    missing.discard("libcuda.so.1")
    if not missing:
        print("torch_cpu_stubs.py: nothing missing")
        return
    undefined, defined, by_version, files = set(), set(), {}, {}
    for lib in libs:
        u, d = dyn_syms(lib, by_version)
        undefined |= u
        defined |= d
        files.update(version_files(lib))
    for name in SYSTEM:
        path = system_lib_path(name)
        if path:
            defined |= dyn_syms(path)[1]
    wanted = sorted(s for s in undefined - defined if s and not s.startswith("_ITM_") and s != "__gmon_start__")
    os.makedirs(STUB_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "stub.c")
        with open(src, "w") as f:
            f.write("/* Link stub: torch's CUDA backend is never used on CPU. */\n")
            for s in wanted:
                f.write(f"int {s}(void) {{ return 100; }}\n")
        for soname in sorted(missing):
            # The loader insists that a reference versioned for this soname (cudaMalloc@
            # libcudart.so.13) finds that version here; every other symbol is unversioned.
            nodes = []
            for version, file in sorted(files.items()):
                syms = sorted(by_version.get(version, set()) & set(wanted))
                if file == soname and syms:
                    nodes.append("%s { global: %s; };\n" % (version, "; ".join(syms)))
            cmd = ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}"]
            if nodes:
                script = os.path.join(tmp, soname + ".map")
                with open(script, "w") as f:
                    f.writelines(nodes)
                cmd.append(f"-Wl,--version-script={script}")
            out = os.path.join(STUB_DIR, soname)
            subprocess.run([*cmd, "-o", out, src], check=True)
    print(f"torch_cpu_stubs.py: {len(missing)} stub libraries ({len(wanted)} symbols) in {STUB_DIR}: {' '.join(sorted(missing))}")


if __name__ == "__main__":
    main()
