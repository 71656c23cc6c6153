"""The backup worker's small S3 client against the real store, boto3 reading back what it wrote
(and writing what it reads): objects with metadata, ranges, multipart, listing past one page,
deletes, and boto3's errors when a key is missing or the store is down."""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from lifeboat.common.settings import S3Settings
from lifeboat.objstore.client import make_light_s3_client, make_s3_client
from lifeboat.objstore.download import ObjectMissingError, object_size, read_object
from tests.endpoints import S3Endpoint

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "lifeboat-backups"


async def test_the_light_client_speaks_s3_as_boto3_does(s3: S3Endpoint) -> None:
    light = make_light_s3_client(s3.settings(), bulk=True)
    boto = make_s3_client(s3.settings(), bulk=True)
    prefix = f"light-{uuid.uuid4().hex[:8]}/"

    key = prefix + "a dir/x y+z~é.bin"  # a key that needs escaping in the path
    light.put_object(Bucket=BUCKET, Key=key, Body=b"hello world", Metadata={"sha256": "abc"})
    head = boto.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == 11
    assert head["Metadata"] == {"sha256": "abc"}
    assert light.head_object(Bucket=BUCKET, Key=key)["Metadata"] == {"sha256": "abc"}
    ranged = light.get_object(Bucket=BUCKET, Key=key, Range="bytes=6-10")
    assert ranged["Body"].read() == b"world"
    boto.put_object(Bucket=BUCKET, Key=prefix + "by-boto", Body=b"x" * 10)
    assert await read_object(light, BUCKET, prefix + "by-boto") == b"x" * 10

    with pytest.raises(ObjectMissingError):
        await object_size(light, BUCKET, prefix + "missing")  # HEAD: a bare 404
    with pytest.raises(ObjectMissingError):
        await read_object(light, BUCKET, prefix + "missing")  # GET: NoSuchKey
    with pytest.raises(ClientError) as bad:
        light.head_bucket(Bucket="no-such-bucket-" + uuid.uuid4().hex[:8])
    assert bad.value.response["Error"]["Code"] in ("404", "NoSuchBucket")

    part = os.urandom(5 * 1024 * 1024)
    mp = prefix + "multipart"
    upload = light.create_multipart_upload(Bucket=BUCKET, Key=mp, Metadata={"k": "v"})["UploadId"]
    assert any(
        u["UploadId"] == upload
        for u in light.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)["Uploads"]
    )
    etags = [
        light.upload_part(Bucket=BUCKET, Key=mp, UploadId=upload, PartNumber=n, Body=body)["ETag"]
        for n, body in ((1, part), (2, b"tail"))
    ]
    light.complete_multipart_upload(
        Bucket=BUCKET,
        Key=mp,
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    assert boto.get_object(Bucket=BUCKET, Key=mp)["Body"].read() == part + b"tail"
    assert boto.head_object(Bucket=BUCKET, Key=mp)["Metadata"] == {"k": "v"}
    dropped = light.create_multipart_upload(Bucket=BUCKET, Key=prefix + "dropped")["UploadId"]
    light.abort_multipart_upload(Bucket=BUCKET, Key=prefix + "dropped", UploadId=dropped)
    assert all(
        u["UploadId"] != dropped
        for u in light.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)["Uploads"]
    )

    many = [f"{prefix}many/{i:04d}" for i in range(1005)]  # more than one page of 1,000
    for name in many:
        light.put_object(Bucket=BUCKET, Key=name, Body=b"")

    def listed(client: S3Client, under: str) -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=under)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    assert listed(light, prefix + "many/") == many == listed(boto, prefix + "many/")
    light.delete_objects(
        Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in many[:1000]], "Quiet": True}
    )
    light.delete_object(Bucket=BUCKET, Key=many[1000])
    assert listed(light, prefix + "many/") == many[1001:]


def test_an_unreachable_store_raises_what_boto3_raises() -> None:
    down = S3Settings(s3_endpoint_url="http://127.0.0.1:9", s3_timeout_seconds=1.0)
    with pytest.raises(BotoCoreError):
        make_light_s3_client(down).head_bucket(Bucket=BUCKET)
