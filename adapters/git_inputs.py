"""What a git source may be, checked before anything is fetched: a repository URL (scheme,
host, no control characters, never a transport helper), a revision (a branch, tag or commit
id git would accept), a path inside the checkout; and a URL made safe to show (credentials
removed). The payloads check builds against these at enqueue.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from kernel.errors import DrydockError


class SourceRefusedError(DrydockError):
    """A repository URL, revision or path Drydock will not use; the message says why."""


# Transports Drydock knows to be plain data transfers. ``ext`` and ``fd`` run commands or read
# descriptors, and remote helpers (``<helper>::<address>``) run programs: never allowed, whatever
# the settings say.
KNOWN_SCHEMES = frozenset({"https", "http", "ssh", "git", "file"})

# Spellings git accepts for ssh.
_SSH_ALIASES = {"git+ssh": "ssh", "ssh+git": "ssh"}

_URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")

_TRANSPORT_HELPER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")

# ``[user@]host:path``: git reads a colon before the first slash as this ssh shorthand.
_SCP_LIKE = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>[^/:]+):(?P<path>.*)$")

_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

HEX_DIGITS = re.compile(r"^[0-9a-f]+$")

# Characters git-check-ref-format forbids in a ref name, plus ``\`` and spaces.
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")

MAX_URL_LENGTH = 2048

MAX_REVISION_LENGTH = 255

# Abbreviated commit ids shorter than git's own minimum are too ambiguous to accept.
MIN_ABBREVIATED_SHA = 7

FULL_SHA_LENGTHS = (40, 64)


def check_repository_url(url: str, allowed_schemes: Sequence[str]) -> str:
    """``url`` itself when git may fetch it; SourceRefusedError saying why not otherwise."""
    if not url:
        raise SourceRefusedError("the repository URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise SourceRefusedError(f"the repository URL is longer than {MAX_URL_LENGTH} characters")
    shown = redact_url(url)
    if url.startswith("-"):
        raise SourceRefusedError(
            f"repository URL {shown!r} begins with '-': git would read it as an option"
        )
    if _CONTROL_OR_SPACE.search(url):
        raise SourceRefusedError(
            f"repository URL {shown!r} contains whitespace or control characters"
        )
    if _TRANSPORT_HELPER.match(url):
        raise SourceRefusedError(
            f"repository URL {shown!r} names a git transport helper ('<helper>::<address>', "
            "such as ext:: which runs commands); only plain URLs are fetched"
        )
    scheme = url_scheme(url)
    if scheme is None:
        raise SourceRefusedError(
            f"repository URL {shown!r} is a local path; write a local repository as "
            "file:///absolute/path (if file is an allowed scheme)"
        )
    allowed = allowed_transports(allowed_schemes)
    if scheme not in allowed:
        raise SourceRefusedError(
            f"repository URL {shown!r} uses {scheme}, which is not allowed here; allowed: "
            f"{', '.join(sorted(allowed)) or 'none'}"
        )
    host = _url_host(url)
    if host is not None and host.startswith("-"):
        raise SourceRefusedError(
            f"repository URL {shown!r} has a host beginning with '-': ssh would read it as an "
            "option"
        )
    # git reads everything after file:// as the path: file://host/x is the relative "host/x".
    if scheme == "file" and not url.split("://", 1)[1].startswith("/"):
        raise SourceRefusedError(
            f"repository URL {shown!r} must name an absolute path (file:///path)"
        )
    return url


def url_scheme(url: str) -> str | None:
    """The transport git would use for ``url``: its scheme (lowercase, ssh spellings folded to
    ``ssh``), ``ssh`` for the scp-like ``[user@]host:path``, None for a local path."""
    match = _URL_SCHEME.match(url)
    if match is not None:
        scheme = match["scheme"].lower()
        return _SSH_ALIASES.get(scheme, scheme)
    if _SCP_LIKE.match(url):
        return "ssh"
    return None


def allowed_transports(allowed_schemes: Sequence[str]) -> frozenset[str]:
    """The configured schemes git may use: those Drydock knows to be safe, nothing else."""
    return (
        frozenset(_SSH_ALIASES.get(s.lower(), s.lower()) for s in allowed_schemes) & KNOWN_SCHEMES
    )


def redact_url(url: str) -> str:
    """``url`` with any password (or token) in it replaced by ``***``: for messages and logs."""
    if _URL_SCHEME.match(url) is None:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unparsable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + netloc, parts.path, parts.query, parts.fragment))


def _url_host(url: str) -> str | None:
    if _URL_SCHEME.match(url):
        try:
            return urlsplit(url).hostname
        except ValueError:
            raise SourceRefusedError(
                f"repository URL {redact_url(url)!r} cannot be parsed"
            ) from None
    scp = _SCP_LIKE.match(url)
    return scp["host"] if scp else None


def check_revision(revision: str) -> str:
    """``revision`` itself when it can name a branch, tag or commit; SourceRefusedError saying
    why not otherwise (the rules of ``git check-ref-format``, and nothing git reads as an
    option). ``refs/heads/<name>`` and ``refs/tags/<name>`` say which of the two is meant."""
    if not revision:
        raise SourceRefusedError("the revision is empty")
    if len(revision) > MAX_REVISION_LENGTH:
        raise SourceRefusedError(f"the revision is longer than {MAX_REVISION_LENGTH} characters")
    if revision.startswith("-"):
        raise SourceRefusedError(
            f"revision {revision!r} begins with '-': git would read it as an option"
        )
    bad = _REF_FORBIDDEN.search(revision)
    if bad is not None:
        raise SourceRefusedError(
            f"revision {revision!r} contains {bad.group()!r}, which no branch or tag name may"
        )
    for part, why in (("..", "'..'"), ("@{", "'@{'"), ("//", "'//'")):
        if part in revision:
            raise SourceRefusedError(f"revision {revision!r} contains {why}")
    if revision == "@" or revision.startswith("/") or revision.endswith(("/", ".", ".lock")):
        raise SourceRefusedError(f"revision {revision!r} is not a valid branch or tag name")
    if any(component.startswith(".") for component in revision.split("/")):
        raise SourceRefusedError(f"revision {revision!r} has a path component beginning with '.'")
    return revision


def resolve_inside(root: Path, relative: str, what: str) -> Path:
    """The existing path ``relative`` names under ``root``, fully resolved; SourceRefusedError
    when it is absolute, climbs out with ``..``, leads (through a symlink the repository
    carries) outside ``root``, or does not exist. ``what`` names it in the message."""
    if _CONTROL.search(relative):
        raise SourceRefusedError(f"{what} {relative!r} contains control characters")
    pure = PurePosixPath(relative or ".")
    if pure.is_absolute():
        raise SourceRefusedError(f"{what} {relative!r} must be relative to the repository")
    if ".." in pure.parts:
        raise SourceRefusedError(f"{what} {relative!r} must not contain '..'")
    base = root.resolve(strict=True)
    candidate = base.joinpath(*pure.parts)
    resolved = candidate.resolve(strict=False)
    if not resolved.is_relative_to(base):
        raise SourceRefusedError(
            f"{what} {relative!r} leads outside the repository (through a symbolic link)"
        )
    if not resolved.exists():
        raise SourceRefusedError(f"{what} {relative!r} does not exist at this revision")
    return resolved
