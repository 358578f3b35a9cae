"""Checks a SigV4 signature the way AWS would, with botocore's own signer.

Usage: check_sigv4.py REQUEST_JSON ACCESS_KEY_ID SECRET_ACCESS_KEY REGION SERVICE

REQUEST_JSON holds what an upstream received: method, url, headers (name -> value) and the body
as base64. The canonical request is rebuilt from the headers the Authorization header says were
signed, at the time its X-Amz-Date says, and the signature recomputed with the given secret.
Prints {"valid": ..., "expected": ..., "received": ...}.
"""

import base64
import json
import sys

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

path, key_id, secret, region, service = sys.argv[1:6]
received = json.load(open(path))
headers = {k.lower(): v for k, v in received["headers"].items()}
authorization = headers["authorization"]
fields = dict(part.strip().split("=", 1) for part in authorization[len("AWS4-HMAC-SHA256 "):].split(","))
signed = fields["SignedHeaders"].split(";")
request = AWSRequest(
    method=received["method"],
    url=received["url"],
    data=base64.b64decode(received["body"]),
    headers={name: headers[name] for name in signed},
)
request.context["timestamp"] = headers["x-amz-date"]
auth = SigV4Auth(Credentials(key_id, secret), service, region)
canonical = auth.canonical_request(request)
expected = auth.signature(auth.string_to_sign(request, canonical), request)
print(json.dumps({
    "valid": expected == fields["Signature"] and fields["Credential"].startswith(f"{key_id}/"),
    "expected": expected,
    "received": fields["Signature"],
}))
