"""What the loopback Hub refuses, as the Hub does: bad repo ids, file paths, branch names, object ids and tokens.

Each ``*_problem`` function returns ``None`` for a good value, or the sentence that the 400 answer carries (the
client shows it in its ``BadRequestError``). The rules: docs/release.md "What it refuses".
"""

import hashlib
import hmac
import ipaddress
import re

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


MAX_SEGMENT_BYTES, MAX_PATH_BYTES = 255, 4096
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SHA256 = re.compile(r"[0-9a-f]{64}")
BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^/|/$|^-|(^|/)\.|\.lock$|\.$|^@$")


def repo_id_problem(repo_id: str) -> str | None:
    """Why ``repo_id`` is not a Hub repo id, or ``None``."""
    if repo_id.count("/") != 1:
        return f"Invalid repo id {repo_id!r}: expected NAMESPACE/NAME"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        return f"Invalid repo id {repo_id!r}: {err}"
    return None


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file in a repo, or ``None``."""
    shown = ascii(path) if len(path) <= 200 else ascii(path[:200]) + "..."
    reason = None
    segments = path.split("/")
    if not path:
        reason = "it is empty"
    elif path.startswith("/"):
        reason = "it starts with '/'"
    elif "\\" in path:
        reason = "it holds a backslash"
    elif CONTROL.search(path):
        reason = "it holds a control character"
    elif "" in segments:
        reason = "it has an empty segment ('//' or a trailing '/')"
    elif ".." in segments or "." in segments:
        reason = "it has a '.' or '..' segment"
    elif ".git" in segments:
        reason = "it is inside a '.git' folder"
    elif len(path.encode()) > MAX_PATH_BYTES:
        reason = f"it is longer than {MAX_PATH_BYTES} bytes"
    elif max(len(s.encode()) for s in segments) > MAX_SEGMENT_BYTES:
        reason = f"a segment is longer than {MAX_SEGMENT_BYTES} bytes"
    return reason and f"Invalid path {shown}: {reason}"


def branch_problem(branch: str) -> str | None:
    """Why ``branch`` is not a branch name Git accepts, or ``None``."""
    if not branch or BAD_REF.search(branch) or len(branch.encode()) > MAX_SEGMENT_BYTES:
        return f"Invalid branch name {ascii(branch)}"
    return None


def oid_problem(oid) -> str | None:
    """Why ``oid`` is not an LFS object id (a sha256 in hex), or ``None``."""
    if isinstance(oid, str) and SHA256.fullmatch(oid):
        return None
    return f"Invalid LFS object id {ascii(oid)[:80]}: expected 64 lowercase hex digits"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (as ``Bearer <token>``), compared in constant time."""
    given = (header or "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.encode())


def upload_signature(token: str, repo: str, oid: str) -> str:
    """The signature of an LFS upload URL: clients send no token to it, as to a presigned storage URL."""
    return hmac.new(token.encode(), f"{repo}:{oid}".encode(), hashlib.sha256).hexdigest()
