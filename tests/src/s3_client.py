# boto3 helper for the S3 end-to-end tests: looks at what the collector
# stored with a client that is not ours. Usage: ENDPOINT COMMAND ARGS..;
# prints one JSON value. Credentials come from the environment.
import base64
import hashlib
import json
import sys
import time

import boto3
from botocore.config import Config

PART = 8 << 20

s3 = boto3.client(
    "s3",
    endpoint_url=sys.argv[1],
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
)
cmd, args = sys.argv[2], sys.argv[3:]


def keys(bucket, prefix):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def describe(bucket, key, version=None):
    extra = {"VersionId": version} if version else {}
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **extra)
    body = s3.get_object(Bucket=bucket, Key=key, **extra)["Body"]
    whole, parts, size, buf = hashlib.sha256(), [], 0, b""
    while True:
        data = body.read(1 << 20)
        if data:
            whole.update(data)
            size += len(data)
            buf += data
        while len(buf) >= PART or (not data and buf):
            parts.append(hashlib.sha256(buf[:PART]).digest())
            buf = buf[PART:]
        if not data:
            break
    composite = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    return {
        "size": size,
        "sha256": whole.hexdigest(),
        "sha256_b64": base64.b64encode(whole.digest()).decode(),
        "composite_8mib": f"{composite}-{len(parts)}",
        "s3_checksum_sha256": head.get("ChecksumSHA256"),
        "version_id": head.get("VersionId"),
        "lock_mode": head.get("ObjectLockMode"),
        "retain_until": str(head.get("ObjectLockRetainUntilDate")),
    }


if cmd == "wait-ready":
    deadline = time.time() + 60
    while True:
        try:
            s3.list_buckets()
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    print("{}")
elif cmd == "create-bucket":
    bucket, mode = args
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=(mode == "lock"))
    print("{}")
elif cmd == "list":
    print(json.dumps(keys(args[0], args[1])))
elif cmd == "delete-prefix":
    gone = keys(args[0], args[1])
    for k in gone:
        s3.delete_object(Bucket=args[0], Key=k)
    print(json.dumps(gone))
elif cmd == "put":
    s3.put_object(Bucket=args[0], Key=args[1], Body=args[2].encode())
    print("{}")
elif cmd == "cat":
    sys.stdout.buffer.write(s3.get_object(Bucket=args[0], Key=args[1])["Body"].read())
elif cmd == "object":
    print(json.dumps(describe(args[0], args[1])))
elif cmd == "try-delete-version":
    bucket, key = args
    version = s3.head_object(Bucket=bucket, Key=key)["VersionId"]
    try:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
        print(json.dumps({"deleted": True}))
    except Exception as e:
        print(json.dumps({"deleted": False, "error": str(e)}))
elif cmd == "try-overwrite":
    bucket, key = args
    before = describe(bucket, key)
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"tampered")
        written = True
    except Exception:
        written = False
    original = describe(bucket, key, before["version_id"])
    print(json.dumps({"written": written, "before": before, "original_after": original}))
elif cmd == "wait-key":
    bucket, prefix, part, timeout = args[0], args[1], args[2], float(args[3])
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [k for k in keys(bucket, prefix) if part in k]
        if found:
            print(json.dumps(found))
            sys.exit(0)
        time.sleep(0.05)
    sys.exit(f"no key under {prefix} containing {part} within {timeout} s")
else:
    sys.exit(f"unknown command {cmd}")
