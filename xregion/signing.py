"""SigV4 for S3 without hashing every request body a second time.

Over plain HTTP, botocore signs the SHA-256 of every request body (``x-amz-content-sha256``),
which costs one more pass over every byte sent to every region. Our uploads already carry the
SHA-256 of their body as the S3 checksum (``x-amz-checksum-sha256``), taken when the file was
read: this signer puts that value in the signature instead of hashing the body again. A store
that checks signatures (AWS, MinIO) still refuses a body that does not match it. Requests without
that header are signed exactly as botocore signs them.
"""

from __future__ import annotations

import base64
import binascii

import botocore.auth
from botocore.auth import S3SigV4Auth
from botocore.handlers import set_operation_specific_signer

NAME = "xregion-s3v4"


class KnownPayloadS3SigV4Auth(S3SigV4Auth):
    def payload(self, request):
        known = request.headers.get("x-amz-checksum-sha256")
        if known and not self._is_streaming_checksum_payload(request) and self._should_sha256_sign_payload(request):
            try:
                digest = base64.b64decode(known, validate=True)
            except (binascii.Error, ValueError):
                digest = b""
            if len(digest) == 32:
                return digest.hex()
        return super().payload(request)


def _choose(signature_version=None, context=None, signing_name=None, **_):
    """Where botocore would sign a request (not a presigned URL) with plain ``s3v4``, use ours;
    otherwise (unsigned, bearer, v4a, express, presigning) say nothing and let botocore choose."""
    if signature_version not in ("v4", "s3v4"):
        return None
    chosen = set_operation_specific_signer(context=context or {}, signing_name=signing_name) or signature_version
    return NAME if chosen == "s3v4" else None


def install(client) -> None:
    """Sign ``client``'s S3 requests with the known payload hash where the request carries one.
    Registered first: botocore's own choice (``set_operation_specific_signer``) answers otherwise
    and the event stops at the first answer."""
    botocore.auth.AUTH_TYPE_MAPS.setdefault(NAME, KnownPayloadS3SigV4Auth)
    client.meta.events.register_first("choose-signer.s3", _choose)
