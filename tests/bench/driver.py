"""Runs on the db host: one measured action, parameters as JSON on stdin, one
JSON line out with wall time, peak RSS and bytes written to disk (self and
waited-for children)."""
import json
import resource
import subprocess
import sys
import time

sys.path.insert(0, "/root/keelson-bench")

from ansible_collections.keelson.stack.plugins.module_utils import backup_dump, backup_restore  # noqa: E402
from ansible_collections.keelson.stack.plugins.module_utils.backup_stream import (  # noqa: E402
    Producer, ProducerStream, upload_stream)

BASELINE = r"""
import sys, boto3
from botocore.config import Config
p = {p}
s3 = boto3.client("s3", endpoint_url=p["s3_endpoint_url"], aws_access_key_id=p["s3_access_key"],
                  aws_secret_access_key=p["s3_secret_key"], region_name="us-east-1",
                  config=Config(s3={{"addressing_style": "path"}}))
s3.upload_fileobj(sys.stdin.buffer, p["s3_bucket"], p["key"])
"""


def main():
    p = json.loads(sys.stdin.read())
    start = time.monotonic()
    out = {}
    if p["action"] == "backup":
        result = backup_dump.run_backup(dict(p, lock_dir="/run/lock/keelson-backup", pg_os_user="postgres"))
        out = {"bytes": result["bytes"], "rows": result["rows"], "backup_id": result["backup_id"]}
    elif p["action"] == "baseline":
        # `pg_dump -Fc | aws s3 cp -`: the same pipeline, with boto3's upload_fileobj (what aws s3 cp uses).
        script = BASELINE.format(p=repr({k: p[k] for k in ("s3_endpoint_url", "s3_access_key", "s3_secret_key",
                                                             "s3_bucket", "key")}))
        dump = subprocess.Popen(["runuser", "-u", "postgres", "--", "pg_dump", "-Fc"] + p.get("pg_dump_args", [])
                                + ["-d", p["database"]],
                                stdout=subprocess.PIPE, cwd="/")
        upload = subprocess.run([sys.executable, "-c", script], stdin=dump.stdout, cwd="/")
        dump.stdout.close()
        assert dump.wait() == 0 and upload.returncode == 0
    elif p["action"] == "stream":
        stream = ProducerStream([Producer("gen", ["head", "-c", str(p["size"]), "/dev/zero"])])
        s3 = backup_dump.s3_from(p)
        upload_stream(s3, p["s3_bucket"], p["key"], stream)
        for version in s3.list_object_versions(Bucket=p["s3_bucket"], Prefix=p["key"]).get("Versions", []):
            s3.delete_object(Bucket=p["s3_bucket"], Key=p["key"], VersionId=version["VersionId"])  # versioned bucket
        out = {"bytes": stream.bytes}
    elif p["action"] == "restore":
        result = backup_restore.run_restore(dict(p, lock_dir="/run/lock/keelson-backup", pg_os_user="postgres",
                                                 drop_after=True, work_dir="/var/tmp"))
        out = {"rows": result["rows"]}
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out.update(seconds=time.monotonic() - start, peak_rss_mib=me.ru_maxrss / 1024.0,
               disk_written_mib=(me.ru_oublock + kids.ru_oublock) * 512 / 1024.0 ** 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
