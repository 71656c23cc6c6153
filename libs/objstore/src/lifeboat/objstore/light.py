"""A small S3 client for the backup worker: the dozen calls it makes, in boto3's spelling.

boto3 costs a long-running worker ~26 MB before it moves a byte (botocore's modules, then
the parsed S3 service model of every client), a quarter of the backup service's 100 MB
budget. The worker needs only plain object, multipart and listing calls, so this client
speaks them over urllib3's connection pool (botocore's own transport) with Signature V4:
same method names, keyword arguments and answer shapes as boto3's, so the code that calls
S3 is the same with either, and the same `botocore.exceptions` (`ClientError` with the
S3 error code, `BotoCoreError` subclasses when the endpoint cannot be reached), which
import nothing heavy. Payloads go as `UNSIGNED-PAYLOAD` with a `Content-MD5` the store
checks: one cheap hash per part instead of a sha256 for the signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_META = "x-amz-meta-"
_UNSIGNED = "UNSIGNED-PAYLOAD"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _q(text: str, safe: str = "-_.~") -> str:
    return quote(text, safe=safe)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _find(node: ET.Element, tag: str) -> str:
    found = node.find(_NS + tag)
    if found is None:
        found = node.find(tag)  # some stores answer without the namespace
    return "" if found is None or found.text is None else found.text


def _all(node: ET.Element, tag: str) -> list[ET.Element]:
    return node.findall(_NS + tag) or node.findall(tag)


@dataclass(frozen=True)
class _Credentials:
    access_key: str
    secret_key: str
    region: str


class _Body:
    """What boto3's `StreamingBody` is used for here: `read()` whole, or `iter_chunks()` for
    an object too big to hold (a file set's large file). Its connection goes back to the
    pool once the body is read to its end."""

    def __init__(self, answer: urllib3.BaseHTTPResponse) -> None:
        self._answer = answer

    def read(self) -> bytes:
        try:
            return self._answer.read()
        finally:
            self._answer.release_conn()

    def iter_chunks(self, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        try:
            yield from self._answer.stream(chunk_size)
        finally:
            self._answer.release_conn()


class _Paginator:
    def __init__(self, client: LightS3) -> None:
        self._client = client

    def paginate(self, *, Bucket: str, Prefix: str = "") -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": Prefix}
            if token:
                query["continuation-token"] = token
            root = self._client._xml("GET", Bucket, "", query, "ListObjectsV2")
            yield {
                "Contents": [
                    {
                        "Key": _find(c, "Key"),
                        "LastModified": _time(_find(c, "LastModified")),
                        "Size": int(_find(c, "Size") or 0),
                        "ETag": _find(c, "ETag"),
                    }
                    for c in _all(root, "Contents")
                ]
            }
            token = _find(root, "NextContinuationToken")
            if _find(root, "IsTruncated") != "true" or not token:
                return


class LightS3:
    """Thread-safe like boto3's client: calls run on worker threads, many at once."""

    def __init__(
        self,
        endpoint_url: str | None,
        *,
        region: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        connect_timeout: float,
        read_timeout: float,
        max_attempts: int,
        max_connections: int,
    ) -> None:
        url = endpoint_url or f"https://s3.{region}.amazonaws.com"
        parts = urlsplit(url)
        self._endpoint = url.rstrip("/")
        self._host = parts.netloc
        self._base = parts.path.rstrip("/")
        self._creds = _Credentials(access_key_id or "", secret_access_key or "", region)
        self._attempts = max(1, max_attempts)
        self._pool = urllib3.connection_from_url(
            url,
            maxsize=max_connections,
            block=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=False,
        )

    # --- signing and sending -------------------------------------------------------------

    def _sign(
        self, method: str, path: str, query: str, headers: dict[str, str], payload_hash: str
    ) -> None:
        now = datetime.now(UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers["host"] = self._host
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = payload_hash
        names = sorted(headers)
        canonical = "\n".join(
            [
                method,
                path,
                query,
                "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
                ";".join(names),
                payload_hash,
            ]
        )
        scope = f"{day}/{self._creds.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = ("AWS4" + self._creds.secret_key).encode()
        for part in (day, self._creds.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self._creds.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )

    def _request(
        self,
        method: str,
        bucket: str,
        key: str,
        operation: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        path = f"{self._base}/{_q(bucket)}" + (f"/{_q(key, '-_.~/')}" if key else "")
        qs = "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted((query or {}).items()))
        for attempt in range(1, self._attempts + 1):
            sent = {k.lower(): v for k, v in (headers or {}).items()}
            if body:
                sent["content-md5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
            self._sign(method, path, qs, sent, _UNSIGNED if body else _EMPTY_SHA256)
            url = path + (f"?{qs}" if qs else "")
            try:
                answer = self._pool.urlopen(
                    method, url, body=body or None, headers=sent, preload_content=not stream,
                    redirect=False,
                )  # fmt: skip
            except urllib3.exceptions.ConnectTimeoutError as exc:
                error: Exception = ConnectTimeoutError(endpoint_url=self._endpoint, error=exc)
            except urllib3.exceptions.ReadTimeoutError as exc:
                error = ReadTimeoutError(endpoint_url=self._endpoint, error=exc)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                error = EndpointConnectionError(endpoint_url=self._endpoint, error=exc)
            else:
                if answer.status < 300:
                    return answer
                error = self._error(answer, operation)
                answer.release_conn()  # a streamed answer's connection, back to the pool
                if answer.status < 500 and answer.status not in (408, 429):
                    raise error
            if attempt == self._attempts:
                raise error
            # Full jitter, as botocore's retries: workers that failed together retry apart.
            time.sleep(random.uniform(0, min(5.0, 0.1 * 2**attempt)))
        raise AssertionError("unreachable")

    @staticmethod
    def _error(answer: urllib3.BaseHTTPResponse, operation: str) -> ClientError:
        code, message = str(answer.status), answer.reason or ""
        if answer.data:
            try:
                root = ET.fromstring(answer.data)
                code = _find(root, "Code") or code
                message = _find(root, "Message") or message
            except ET.ParseError:
                pass
        response: Any = {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": answer.status},
        }
        return ClientError(response, operation)

    def _xml(
        self,
        method: str,
        bucket: str,
        key: str,
        query: Mapping[str, str],
        operation: str,
        body: bytes = b"",
    ) -> ET.Element:
        answer = self._request(method, bucket, key, operation, query=query, body=body)
        root = ET.fromstring(answer.data)
        if root.tag.endswith("Error"):  # a 200 that is an error (CompleteMultipartUpload)
            raise ClientError(
                {"Error": {"Code": _find(root, "Code"), "Message": _find(root, "Message")}},
                operation,
            )
        return root

    @staticmethod
    def _meta_headers(
        metadata: Mapping[str, str] | None, content_type: str | None = None
    ) -> dict[str, str]:
        headers = {_META + k: v for k, v in (metadata or {}).items()}
        if content_type:
            headers["content-type"] = content_type
        return headers

    @staticmethod
    def _metadata(answer: urllib3.BaseHTTPResponse) -> dict[str, str]:
        return {
            k.lower()[len(_META) :]: v
            for k, v in answer.headers.items()
            if k.lower().startswith(_META)
        }

    def _head_answer(self, answer: urllib3.BaseHTTPResponse) -> dict[str, Any]:
        modified = answer.headers.get("last-modified")
        return {
            "ContentLength": int(answer.headers.get("content-length", 0)),
            "ETag": answer.headers.get("etag", ""),
            "LastModified": parsedate_to_datetime(modified) if modified else None,
            "Metadata": self._metadata(answer),
        }

    # --- boto3's calls -------------------------------------------------------------------

    def put_object(
        self,
        *,
        Bucket: str,
        Key: str,
        Body: bytes,
        Metadata: Mapping[str, str] | None = None,
        ContentType: str | None = None,
    ) -> dict[str, Any]:
        headers = self._meta_headers(Metadata, ContentType)
        answer = self._request("PUT", Bucket, Key, "PutObject", body=bytes(Body), headers=headers)
        return {"ETag": answer.headers.get("etag", "")}

    def get_object(self, *, Bucket: str, Key: str, Range: str | None = None) -> dict[str, Any]:
        headers = {"range": Range} if Range else None
        answer = self._request("GET", Bucket, Key, "GetObject", headers=headers, stream=True)
        return {**self._head_answer(answer), "Body": _Body(answer)}

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        return self._head_answer(self._request("HEAD", Bucket, Key, "HeadObject"))

    def delete_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self._request("DELETE", Bucket, Key, "DeleteObject")
        return {}

    def delete_objects(self, *, Bucket: str, Delete: Mapping[str, Any]) -> dict[str, Any]:
        root = ET.Element("Delete")
        if Delete.get("Quiet"):
            ET.SubElement(root, "Quiet").text = "true"
        for obj in Delete["Objects"]:
            ET.SubElement(ET.SubElement(root, "Object"), "Key").text = obj["Key"]
        body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        answer = self._xml("POST", Bucket, "", {"delete": ""}, "DeleteObjects", body)
        errors = [
            {"Key": _find(e, "Key"), "Code": _find(e, "Code"), "Message": _find(e, "Message")}
            for e in _all(answer, "Error")
        ]
        return {"Errors": errors} if errors else {}

    def create_multipart_upload(
        self,
        *,
        Bucket: str,
        Key: str,
        Metadata: Mapping[str, str] | None = None,
        ContentType: str | None = None,
    ) -> dict[str, Any]:
        answer = self._request(
            "POST",
            Bucket,
            Key,
            "CreateMultipartUpload",
            query={"uploads": ""},
            headers=self._meta_headers(Metadata, ContentType),
        )
        root = ET.fromstring(answer.data)
        return {"UploadId": _find(root, "UploadId")}

    def upload_part(
        self, *, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes
    ) -> dict[str, Any]:
        query = {"partNumber": str(PartNumber), "uploadId": UploadId}
        answer = self._request("PUT", Bucket, Key, "UploadPart", query=query, body=bytes(Body))
        return {"ETag": answer.headers.get("etag", "")}

    def complete_multipart_upload(
        self, *, Bucket: str, Key: str, UploadId: str, MultipartUpload: Mapping[str, Any]
    ) -> dict[str, Any]:
        root = ET.Element("CompleteMultipartUpload")
        for part in MultipartUpload["Parts"]:
            node = ET.SubElement(root, "Part")
            ET.SubElement(node, "PartNumber").text = str(part["PartNumber"])
            ET.SubElement(node, "ETag").text = part["ETag"]
        body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        answer = self._xml(
            "POST", Bucket, Key, {"uploadId": UploadId}, "CompleteMultipartUpload", body
        )
        return {"ETag": _find(answer, "ETag")}

    def list_parts(
        self, *, Bucket: str, Key: str, UploadId: str, PartNumberMarker: int = 0
    ) -> dict[str, Any]:
        query = {"uploadId": UploadId, "part-number-marker": str(PartNumberMarker)}
        root = self._xml("GET", Bucket, Key, query, "ListParts")
        return {
            "Parts": [
                {
                    "PartNumber": int(_find(p, "PartNumber")),
                    "ETag": _find(p, "ETag"),
                    "Size": int(_find(p, "Size") or 0),
                }
                for p in _all(root, "Part")
            ],
            "IsTruncated": _find(root, "IsTruncated") == "true",
            "NextPartNumberMarker": int(_find(root, "NextPartNumberMarker") or 0),
        }

    def abort_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str) -> dict[str, Any]:
        self._request("DELETE", Bucket, Key, "AbortMultipartUpload", query={"uploadId": UploadId})
        return {}

    def list_multipart_uploads(self, *, Bucket: str, Prefix: str = "") -> dict[str, Any]:
        root = self._xml("GET", Bucket, "", {"uploads": "", "prefix": Prefix}, "ListUploads")
        return {
            "Uploads": [
                {
                    "Key": _find(u, "Key"),
                    "UploadId": _find(u, "UploadId"),
                    "Initiated": _time(_find(u, "Initiated")),
                }
                for u in _all(root, "Upload")
            ]
        }

    def get_paginator(self, operation: str) -> _Paginator:
        if operation != "list_objects_v2":
            raise NotImplementedError(f"{operation}: not a call of the light S3 client")
        return _Paginator(self)

    def head_bucket(self, *, Bucket: str) -> dict[str, Any]:
        self._request("HEAD", Bucket, "", "HeadBucket")
        return {}

    def list_buckets(self) -> dict[str, Any]:
        answer = self._request("GET", "", "", "ListBuckets")
        root = ET.fromstring(answer.data)
        return {"Buckets": [{"Name": _find(b, "Name")} for b in root.iter(_NS + "Bucket")]}

    def create_bucket(self, *, Bucket: str) -> dict[str, Any]:
        self._request("PUT", Bucket, "", "CreateBucket")
        return {}

    def close(self) -> None:
        self._pool.close()
