"""Parsing dpkg-query's answer, on output taken from a lab host (Debian 13)."""
from ansible_collections.keelson.stack.plugins.module_utils.apt_packages import (
    installed_names, missing_packages, query_argv)

# `dpkg-query --show --showformat='${db:Status-Abbrev}\t${Package}\n' -- ...` on db1, plus a
# removed package with its configuration left (rc), a held one (hi) and a half-configured one (iF).
OUTPUT = (
    "ii \tlibc6\n"
    "ii \topenssh-server\n"
    "un \tpython3-all\n"
    "ii \tpython3-apt\n"
    "rc \tredis-server\n"
    "hi \tpostgresql-17\n"
    "iF \tnginx\n"
    "ii \tsudo\n"
)


def test_installed_names_are_the_installed_and_configured_ones():
    assert installed_names(OUTPUT) == {"libc6", "openssh-server", "python3-apt", "postgresql-17", "sudo"}


def test_nothing_is_missing_on_a_converged_host():
    assert missing_packages(OUTPUT, ["sudo", "openssh-server", "python3-apt"]) == []


def test_removed_unknown_and_half_configured_packages_are_missing_in_the_asked_order():
    names = ["sudo", "redis-server", "nosuchpkg", "nginx", "python3-all", "libc6"]
    assert missing_packages(OUTPUT, names) == ["redis-server", "nosuchpkg", "nginx", "python3-all"]


def test_names_dpkg_cannot_answer_for_are_left_to_apt():
    names = ["sudo", "libc6:amd64", "nginx=1.26.3-3", "python3-*", "./local.deb"]
    assert query_argv(names) == ["dpkg-query", "--show", "--showformat=${db:Status-Abbrev}\t${Package}\n", "--",
                                 "sudo"]
    assert missing_packages(OUTPUT, names) == ["libc6:amd64", "nginx=1.26.3-3", "python3-*", "./local.deb"]


def test_no_output_means_everything_is_missing():
    assert missing_packages("", ["sudo", "acl"]) == ["sudo", "acl"]
