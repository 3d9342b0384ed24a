"""Where a shard export lives: a local folder or an ``s3://bucket/prefix`` (any S3-compatible
store), behind one small interface, and the one-line wording of an object store's errors.

The S3 side is boto3's (the client litdata itself uses): credentials, region and endpoint come
from boto3's usual sources (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for a store other than AWS, such as MinIO or a
local test server). boto3 is imported only when an ``s3://`` URL is used: it is in the
``stream`` extra, not a core dependency.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from alexnet.errors import UserError

SCHEMES = ("s3",)


def is_url(spec: str | os.PathLike[str]) -> bool:
    return "://" in str(spec)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at either end)."""
    u = urlparse(url)
    if u.scheme not in SCHEMES:
        raise UserError(f"{url}: unsupported URL scheme {u.scheme!r}; accepted: "
                        f"{', '.join(s + '://BUCKET/PREFIX' for s in SCHEMES)} or a local folder")
    if not u.netloc:
        raise UserError(f"{url}: no bucket; give s3://BUCKET/PREFIX")
    prefix = u.path.strip("/")
    if not prefix:
        raise UserError(f"{url}: no prefix; give s3://BUCKET/PREFIX (an export never takes a whole bucket)")
    return u.netloc, prefix


def endpoint_url() -> str | None:
    """The S3 endpoint other than AWS's own (``AWS_ENDPOINT_URL``), or None."""
    return os.environ.get("AWS_ENDPOINT_URL") or None


def s3_error(e: BaseException, url: str) -> UserError:
    """One line for what boto3 raised on ``url``: missing credentials, an unreachable endpoint, a
    missing bucket, a refusal."""
    from botocore import exceptions as bx

    where = endpoint_url() or "AWS S3"
    if isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return UserError(f"{url}: no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                         f"or AWS_PROFILE)")
    if isinstance(e, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return UserError(f"{url}: cannot reach the object store at {where} ({str(e).splitlines()[0][:160]}); "
                         f"check AWS_ENDPOINT_URL and the network")
    if isinstance(e, bx.ClientError):
        err = e.response.get("Error", {})
        code, msg = str(err.get("Code", "")), str(err.get("Message", "")).strip()
        if code == "NoSuchBucket":
            return UserError(f"{url}: no such bucket at {where}")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
            return UserError(f"{url}: refused by the object store ({code}{': ' + msg[:120] if msg else ''}); "
                             f"check the credentials and their permissions")
        return UserError(f"{url}: the object store answered {code or 'an error'}{': ' + msg[:160] if msg else ''}")
    if isinstance(e, bx.BotoCoreError):
        return UserError(f"{url}: {str(e).splitlines()[0][:200]}")
    return UserError(f"{url}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")


class Store:
    """The files of one export, by name relative to its root (``train/index.json``)."""

    url: str

    def read(self, name: str) -> bytes | None:  # None when absent
        raise NotImplementedError

    def write(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def create(self, name: str, data: bytes) -> bool:
        """Write ``name`` only if it does not exist (atomically); False when it did."""
        raise NotImplementedError

    def upload(self, local: Path, name: str) -> None:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def child(self, name: str) -> str:
        """The URL or path of ``name``, as litdata reads it."""
        return f"{self.url.rstrip('/')}/{name}"


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())

    def upload(self, local: Path, name: str) -> None:
        (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, self.root / name)


class S3Store(Store):
    def __init__(self, url: str) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}"
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise UserError(f"{url}: reading or writing s3:// needs the stream extra: pip install 'alexnet[stream]'") from None
        # A few quick tries, not boto3's minutes of retries, so that an unreachable endpoint is one
        # line within seconds.
        cfg = Config(connect_timeout=5, read_timeout=60, retries={"total_max_attempts": 3, "mode": "standard"})
        # A session of its own: boto3's default session keeps the credentials it first found.
        self.client: Any = boto3.session.Session().client("s3", config=cfg)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def _call(self, fn: Any, **kw: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kw)
        except Exception as e:
            raise s3_error(e, self.url) from None

    def read(self, name: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise s3_error(e, self.url) from None
        except Exception as e:
            raise s3_error(e, self.url) from None

    def write(self, name: str, data: bytes) -> None:
        self._call(self.client.put_object, Key=self._key(name), Body=data)

    def create(self, name: str, data: bytes) -> bool:
        # A conditional write (If-None-Match: *): the store itself decides which of two writers wins.
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise s3_error(e, self.url) from None
        except Exception as e:
            raise s3_error(e, self.url) from None

    def upload(self, local: Path, name: str) -> None:
        try:
            self.client.upload_file(str(local), self.bucket, self._key(name))
        except Exception as e:
            cause = getattr(e, "__context__", None) or e  # S3UploadFailedError wraps the ClientError
            raise s3_error(cause, self.url) from None

    def delete(self, name: str) -> None:
        self._call(self.client.delete_object, Key=self._key(name))

    def names(self) -> list[str]:
        out: list[str] = []
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Prefix": self.prefix + "/"}
            if token:
                kw["ContinuationToken"] = token
            page = self._call(self.client.list_objects_v2, **kw)
            out += [o["Key"][len(self.prefix) + 1:] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(out)
            token = page.get("NextContinuationToken")


def open_store(spec: str | os.PathLike[str]) -> Store:
    return S3Store(str(spec)) if is_url(spec) else LocalStore(Path(spec).expanduser())
