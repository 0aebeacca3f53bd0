"""Makes `ansible_collections.keelson.stack` importable from the checkout, as
ansible-test does, through the committed collections/ link."""
import sys
from pathlib import Path

COLLECTIONS = Path(__file__).resolve().parents[2] / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
