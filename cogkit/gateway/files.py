"""Files the gateway holds: uploads (POST /v1/files) and the file outputs of predictions.

Bytes live under `<data>/files/<id>`, written atomically; the record is in SQLite. Download URLs are
signed like Replicate's (`/v1/files/{id}/download?owner=&expiry=&signature=`), so they work without
a token, in a browser or for the client's FileOutput.
"""

import base64
import hashlib
import hmac
import mimetypes
import os
import secrets
import tempfile
import time
import urllib.parse
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cogkit.gateway.store import Store

OWNER = "local"
URL_LIFETIME = 7 * 24 * 3600


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FileStore:
    def __init__(self, folder: Path, store: Store, public_url: str, signing_key: bytes):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.public_url = public_url.rstrip("/")
        self.key = signing_key

    def signature(self, file_id: str, expiry: int, owner: str = OWNER) -> str:
        digest = hmac.new(self.key, f"{owner} {file_id} {expiry}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def check_signature(self, file_id: str, owner: str, expiry: str, signature: str) -> str | None:
        """Why a download link is not valid, or None when it is."""
        try:
            expires = int(expiry)
        except (TypeError, ValueError):
            return "expiry must be a Unix timestamp"
        if expires < time.time():
            return "the download link has expired"
        if not hmac.compare_digest(self.signature(file_id, expires, owner), signature or ""):
            return "the signature does not match"
        return None

    def download_url(self, file_id: str) -> str:
        expiry = int(time.time()) + URL_LIFETIME
        query = urllib.parse.urlencode({"owner": OWNER, "expiry": expiry,
                                        "signature": self.signature(file_id, expiry)})
        return f"{self.public_url}/v1/files/{file_id}/download?{query}"

    def add(self, data: bytes, name: str, content_type: str | None = None, metadata: dict | None = None) -> dict:
        file_id = secrets.token_hex(12)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".upload-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, self.folder / file_id)
        now = datetime.now(timezone.utc)
        record = {
            "id": file_id,
            "name": name,
            "content_type": content_type or mimetypes.guess_type(name)[0] or "application/octet-stream",
            "size": len(data),
            "etag": hashlib.md5(data).hexdigest(),
            "checksums": {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()},
            "metadata": metadata or {},
            "created_at": iso(now),
            "expires_at": iso(now + timedelta(seconds=URL_LIFETIME)),
        }
        self.store.save_file(record)
        return record

    def describe(self, record: dict) -> dict:
        return {**record, "urls": {"get": self.download_url(record["id"])}}

    def path(self, file_id: str) -> Path:
        return self.folder / file_id

    def delete(self, file_id: str) -> None:
        self.store.delete_file(file_id)
        self.path(file_id).unlink(missing_ok=True)

    def add_data_uri(self, uri: str, stem: str) -> dict:
        header, _, payload = uri.partition(",")
        mime = header[5:].split(";")[0] or "application/octet-stream"
        data = base64.b64decode(payload) if ";base64" in header else urllib.parse.unquote_to_bytes(payload)
        ext = mimetypes.guess_extension(mime) or ".bin"
        return self.add(data, f"{stem}{ext}", mime)

    def own_file_id(self, url: str) -> str | None:
        """The id when `url` is one of this gateway's download links."""
        prefix = f"{self.public_url}/v1/files/"
        if not url.startswith(prefix):
            return None
        file_id = url[len(prefix):].split("/", 1)[0].split("?", 1)[0]
        return file_id if self.store.get_file(file_id) else None

    def as_data_uri(self, file_id: str) -> str:
        record = self.store.get_file(file_id)
        data = self.path(file_id).read_bytes()
        return f"data:{record['content_type']};base64,{base64.b64encode(data).decode()}"
