#!/usr/bin/env python3
"""`ansible-test sanity` on the collection as it ships: builds the tarball (so the
lab, tests and caches are left out, as for users), unpacks it into a temporary
ansible_collections/keelson/stack tree and runs sanity there with per-test
virtualenvs from PyPI (no container images needed)."""
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

# ansible-test bootstraps pip in its virtualenvs with a get-pip script it downloads
# from a host this machine cannot reach, and uses a cached copy when one exists.
# This stand-in does the same job from the interpreter's bundled pip (ensurepip),
# then installs the pinned pip ansible-test asked for from PyPI.
GET_PIP_STANDIN = """\
import subprocess, sys
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
"""


def provide_get_pip():
    import ansible_test
    source = (Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py").read_text()
    version = re.search(r"pip='([0-9.]+)'", source).group(1)   # the pip ansible-test pins
    cache = Path.home() / ".ansible" / "test" / "cache" / f"get_pip_{version.replace('.', '_')}.py"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(GET_PIP_STANDIN)


def main(argv):
    provide_get_pip()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["ansible-galaxy", "collection", "build", "--output-path", tmp, str(ROOT)],
                       check=True, stdout=subprocess.DEVNULL)
        tree = Path(tmp) / "ansible_collections" / "keelson" / "stack"
        tree.mkdir(parents=True)
        with tarfile.open(next(Path(tmp).glob("keelson-stack-*.tar.gz"))) as tf:
            tf.extractall(tree, filter="data")
        cmd = ["ansible-test", "sanity", "--venv", "--python", PYTHON, "--color", "no", *argv]
        print("sanity:", " ".join(cmd), flush=True)
        return subprocess.call(cmd, cwd=tree, env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=tmp))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
