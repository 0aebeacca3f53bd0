"""Checks a lab S3 server for the multipart defects of the dbstore image and measures it.

usage: check_s3.py ENDPOINT_URL BUCKET   (S3_ACCESS_KEY / S3_SECRET_KEY in the environment)
1. three distinct random 5 MiB parts, sequential: byte-exact round trip
2. five parts uploaded by four threads in parallel: completes and round-trips
3. a 200 MiB stream through upload_fileobj (default TransferConfig): sha256 equal,
   upload and download throughput
"""
import concurrent.futures
import hashlib
import io
import os
import sys
import time

import boto3

MiB = 1024 * 1024
endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=os.environ["S3_ACCESS_KEY"],
                  aws_secret_access_key=os.environ["S3_SECRET_KEY"])


def multipart(key, parts, workers):
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    def put(n):
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                              Body=parts[n - 1])["ETag"]
        return {"PartNumber": n, "ETag": etag}

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(put, range(1, len(parts) + 1)))
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                 MultipartUpload={"Parts": done})
    got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=key)
    want = b"".join(parts)
    bad = [i + 1 for i, p in enumerate(parts)
           if got[sum(map(len, parts[:i])):sum(map(len, parts[:i + 1]))] != p]
    return got == want, len(got), bad


class Stream(io.RawIOBase):
    """A non-seekable stream of pseudo-random bytes, hashed as it is read."""

    def __init__(self, size):
        self.left, self.sha = size, hashlib.sha256()
        self.block = os.urandom(MiB)
        self.counter = 0

    def readable(self):
        return True

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.left
        n = min(n, self.left)
        out = bytearray()
        while len(out) < n:
            self.counter += 1
            out += hashlib.sha256(self.counter.to_bytes(8, "big")).digest() + self.block[:min(MiB, n - len(out)) - 32]
        out = bytes(out[:n])
        self.left -= n
        self.sha.update(out)
        return out


ok = True
for name, parts, workers in (("3 x 5 MiB sequential", [os.urandom(5 * MiB) for _ in range(3)], 1),
                             ("5 x 5 MiB, 4 threads", [os.urandom(5 * MiB) for _ in range(5)], 4)):
    t = time.monotonic()
    same, size, bad = multipart(f"check/{name.replace(' ', '_')}", parts, workers)
    print(f"{name}: {'OK' if same else 'CORRUPT'} ({size} bytes, bad parts {bad}, {time.monotonic() - t:.1f} s)")
    ok &= same

size = 200 * MiB
src = Stream(size)
t = time.monotonic()
s3.upload_fileobj(src, bucket, "check/stream-200M")
up = time.monotonic() - t
sha = hashlib.sha256()
t = time.monotonic()
body = s3.get_object(Bucket=bucket, Key="check/stream-200M")["Body"]
n = 0
for chunk in iter(lambda: body.read(MiB), b""):
    sha.update(chunk)
    n += len(chunk)
down = time.monotonic() - t
etag = s3.head_object(Bucket=bucket, Key="check/stream-200M")["ETag"]  # "...-N": N parts
s3.delete_object(Bucket=bucket, Key="check/stream-200M")
same = n == size and sha.hexdigest() == src.sha.hexdigest()
print(f"200 MiB upload_fileobj: {'OK' if same else 'CORRUPT'} (ETag {etag}) "
      f"up {size / MiB / up:.0f} MiB/s ({up:.1f} s), down {size / MiB / down:.0f} MiB/s ({down:.1f} s)")
ok &= same
sys.exit(0 if ok else 1)
