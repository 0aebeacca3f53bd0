"""sslyze (from PyPI) checks the instance against Mozilla's intermediate profile, trusting
only the internal CA. sslyze exits 0 when nothing answers, so the scan's own connectivity
and completion status are checked as well as the compliance verdict.

sslyze pins cryptography<47, which breaks community.crypto in the main venv, so it lives in
its own venv: $KEELSON_SSLYZE, else .cache/sslyze-venv/bin/sslyze (`make sslyze`)."""
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SSLYZE = os.environ.get("KEELSON_SSLYZE", str(ROOT / ".cache" / "sslyze-venv" / "bin" / "sslyze"))
CA = "/etc/nginx/keelson/tls/internal-ca.crt"


def test_sslyze_reports_mozilla_intermediate_compliance(host, tmp_path):
    assert Path(SSLYZE).exists(), f"sslyze not installed at {SSLYZE} (run `make sslyze`)"
    address = host.run("hostname -I").stdout.split()[0]
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(host.file(CA).content_string)
    out = tmp_path / "scan.json"
    res = subprocess.run(
        [SSLYZE, "--mozilla_config=intermediate", "--resum", f"--certinfo_ca_file={ca_file}",
         f"--json_out={out}", f"web.molecule.test:443{{{address}}}"],
        capture_output=True, text=True, timeout=900, check=False)
    print(res.stdout)
    scan = json.loads(out.read_text())["server_scan_results"]
    assert len(scan) == 1
    assert scan[0]["connectivity_status"] == "COMPLETED", scan[0]["connectivity_error_trace"]
    assert scan[0]["scan_status"] == "COMPLETED"
    deployments = scan[0]["scan_result"]["certificate_info"]["result"]["certificate_deployments"]
    assert deployments[0]["verified_certificate_chain"], "chain not verified against the internal CA"
    # Mozilla intermediate: ssl_session_tickets off (resumption by session id only)
    resumption = scan[0]["scan_result"]["session_resumption"]
    assert resumption["status"] == "COMPLETED", resumption
    assert resumption["result"]["tls_ticket_resumption_result"] == "NOT_SUPPORTED", resumption["result"]
    assert res.returncode == 0, res.stdout + res.stderr
    assert "web.molecule.test:443: OK - Compliant." in res.stdout
