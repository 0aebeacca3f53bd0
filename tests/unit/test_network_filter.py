"""in_networks, the check behind the base role's SSH lock-out guard."""
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.keelson.stack.plugins.filter.network import in_networks

ADMIN = ["192.0.2.0/24", "198.51.100.7", "2001:db8:10::/48"]


@pytest.mark.parametrize("address,expected", [
    ("192.0.2.200", True),
    ("192.0.3.1", False),
    ("198.51.100.7", True),            # a bare address is a /32
    ("198.51.100.8", False),
    ("::ffff:192.0.2.9", True),        # sshd on a dual-stack socket reports IPv4 like this
    ("2001:db8:10:ffff::1", True),
    ("2001:db8:11::1", False),
    ("fe80::1%eth0", False),           # zone index stripped, still not listed
    (" 192.0.2.1 ", True),
])
def test_membership(address, expected):
    assert in_networks(address, ADMIN) is expected


def test_empty_list_admits_nobody():
    assert in_networks("192.0.2.1", []) is False


def test_any_address():
    assert in_networks("203.0.113.5", ["0.0.0.0/0"]) is True
    assert in_networks("2001:db8::5", ["0.0.0.0/0"]) is False


@pytest.mark.parametrize("address,networks", [("not-an-ip", ADMIN), ("192.0.2.1", ["192.0.2.0/33"])])
def test_bad_input_is_a_clear_error(address, networks):
    with pytest.raises(AnsibleFilterError, match="in_networks"):
        in_networks(address, networks)
