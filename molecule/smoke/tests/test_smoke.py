"""The smoke scenario: the lab image boots and Ansible changed it as asked."""


def test_systemd_is_running(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state == "running", host.run("systemctl --failed --no-legend").stdout


def test_release_matches_group(host):
    release = host.file("/etc/debian_version").content_string.split(".")[0]
    if release.startswith("trixie"):
        release = "13"
    expected = "12" if host.backend.get_hostname().endswith("debian12") else "13"
    assert release == expected


def test_marker_written_by_converge(host):
    marker = host.file("/etc/keelson-smoke")
    assert marker.exists and marker.mode == 0o644 and marker.user == "root"
    assert marker.content_string.startswith("debian ")


def test_package_installed_through_cache(host):
    assert host.package("tzdata").is_installed
