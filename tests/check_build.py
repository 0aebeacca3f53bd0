#!/usr/bin/env python3
"""`ansible-galaxy collection build` must give an installable tarball that leaves
out the lab, the tests and caches. Builds, inspects and installs it into a
temporary directory; exits non-zero with the reason otherwise."""
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("lab/", "tests/", "molecule/", ".venv/", ".cache/", "collections/", ".git/",
             "inventories/lab/", ".ci/")
REQUIRED = ("galaxy.yml", "MANIFEST.json", "meta/runtime.yml", "README.md")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["ansible-galaxy", "collection", "build", "--output-path", tmp, str(ROOT)],
                       check=True, stdout=subprocess.DEVNULL)
        tarball = next(Path(tmp).glob("keelson-stack-*.tar.gz"))
        with tarfile.open(tarball) as tf:
            names = tf.getnames()
        leaked = sorted({n for n in names if n.startswith(FORBIDDEN) or "__pycache__" in n})
        if leaked:
            print("check_build: the tarball contains files it must not:\n  " + "\n  ".join(leaked[:20]))
            return 1
        missing = [r for r in REQUIRED if r not in names and r != "galaxy.yml"]
        if missing:
            print(f"check_build: the tarball lacks {missing}")
            return 1
        dest = Path(tmp) / "installed"
        subprocess.run(["ansible-galaxy", "collection", "install", "--offline", "--no-deps", "--force",
                        "-p", str(dest), str(tarball)], check=True, stdout=subprocess.DEVNULL)
        if not (dest / "ansible_collections" / "keelson" / "stack" / "MANIFEST.json").exists():
            print("check_build: the installed collection has no MANIFEST.json")
            return 1
        size = tarball.stat().st_size
        print(f"check_build: {tarball.name} ({size // 1024} KiB, {len(names)} entries) builds and installs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
