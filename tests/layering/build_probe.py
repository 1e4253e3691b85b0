#!/usr/bin/env python3
"""The build itself enforces src/modules.txt: compiled with the exact command the build uses
for a file of module M (compile_commands.json), an #include of the header of a module M may
not use fails with "No such file", and an include of a module it may use compiles.

Library headers are probed too where the build can hide them (libpq's live outside the
compiler's default directories); those in a system directory (curl, sodium, ...) are left to
scripts/check-layering, and this test says which.

Usage: build_probe.py SOURCE_DIR BUILD_DIR
"""
import concurrent.futures
import importlib.machinery
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile

source_dir, build_dir = sys.argv[1], sys.argv[2]
loader = importlib.machinery.SourceFileLoader("check_layering",
                                              os.path.join(source_dir, "scripts", "check-layering"))
spec = importlib.util.spec_from_loader("check_layering", loader)
layering = importlib.util.module_from_spec(spec)
loader.exec_module(layering)

modules, libraries, errors = layering.read_table(os.path.join(source_dir, "src", "modules.txt"))
if errors:
    sys.exit("\n".join(errors))
with open(os.path.join(build_dir, "compile_commands.json"), encoding="utf-8") as f:
    commands = json.load(f)


def module_command(name):
    """The build's compile command for the first source file of src/<name>/, as argv."""
    prefix = os.path.realpath(os.path.join(source_dir, "src", name)) + os.sep
    for c in sorted(commands, key=lambda c: c["file"]):
        if os.path.realpath(c["file"]).startswith(prefix):
            argv = c["arguments"] if "arguments" in c else shlex.split(c["command"])
            return c["directory"], argv, c["file"]
    return None


def first_header(name):
    headers = sorted(h for h in os.listdir(os.path.join(source_dir, "src", name)) if h.endswith(".h"))
    return headers[0] if headers else None


def compile_probe(command, text):
    """Compiles text with the command of a module (source and output swapped); (ok, output)."""
    directory, argv, source = command
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.c")
        with open(probe, "w", encoding="utf-8") as f:
            f.write(text)
        out, skip = [], False
        for a in argv:
            if skip:
                skip = False
                continue
            if a in ("-o", "-MF", "-MT", "-MQ"):
                skip = True
                continue
            if a in ("-c", "-MD", "-MMD") or a == source or os.path.realpath(os.path.join(directory, a)) == os.path.realpath(source):
                continue
            out.append(a)
        run = subprocess.run(out + ["-fsyntax-only", probe], cwd=directory, capture_output=True, text=True)
        return run.returncode == 0, run.stdout + run.stderr


def probes_of(name, command):
    """Yields (module, probe text, expected to compile, what, header) for one module."""
    allowed_modules, allowed_libraries = layering.closure(modules, name)
    for other in modules:
        header = first_header(other)
        if header:
            yield name, command, f'#include "{header}"\nint probe;\n', other in allowed_modules, other, header
    for lib, patterns in libraries.items():
        plain = [p for p in patterns if "*" not in p]
        if lib in allowed_libraries or not plain:
            continue
        text = f"#include <{plain[0]}>\nint probe;\n"
        # a header the bare compiler finds lives in a system directory: only the lint sees it
        bare_ok, _ = compile_probe((command[0], [command[1][0], "-c", command[2]], command[2]), text)
        if bare_ok:
            print(f"lint only: {name} and <{plain[0]}> ({lib} is in a system directory)")
            continue
        yield name, command, text, False, lib, plain[0]


def judge(probe):
    name, command, text, allowed, what, header = probe
    ok, output = compile_probe(command, text)
    if allowed and not ok:
        return f"FAIL: {name} may use {what}, but {header} does not compile:\n{output}"
    if not allowed and ok:
        return f"FAIL: {name} may not use {what}, but {header} compiles"
    if not allowed and f"{header}: No such file" not in output:
        return f"FAIL: {name} including {header} fails for another reason:\n{output}"
    return f"ok: {name} {'sees' if ok else 'does not see'} {header}"


all_probes = []
for name in modules:
    command = module_command(name)
    if not command:
        print(f"skip: {name} has no source file yet")
        continue
    all_probes.extend(probes_of(name, command))
with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    results = list(pool.map(judge, all_probes))
for line in results:
    print(line)
failures = sum(line.startswith("FAIL") for line in results)
print(f"{len(results)} probes, {failures} failures")
sys.exit(1 if failures or not results else 0)
