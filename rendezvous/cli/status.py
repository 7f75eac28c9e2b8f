"""``txrendezvous status``: list a node's allocations and sessions, end one.

    txrendezvous status [--metrics HOST:PORT] [--state-dir DIR] [--json] [--limit N]
    txrendezvous status end allocation|session ID

Talks to the admin API on the node's ``--metrics`` port (``rendezvous.node.admin``)
with the token from ``STATE_DIR/admin.token``, so it runs on the node's host
as a user who may read the state directory.
"""

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from relay.config import ConfigError, default_state_dir, parse_host_port

from rendezvous.node.admin import MAX_LIMIT, TOKEN_FILE

_COLUMNS = {
    "allocations": ("id", "user", "client", "transport", "relayed", "age_seconds", "lifetime_left_seconds",
                    "permissions", "channels", "bytes_to_peer", "bytes_to_client"),
    "sessions": ("id", "user", "client", "state", "nat_type", "rtt_ms", "age_seconds"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", default="127.0.0.1:9641", help="the node's --metrics HOST:PORT (default: %(default)s)")
    parser.add_argument("--state-dir", type=Path, default=default_state_dir(),
                        help="the node's state dir, holding admin.token (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of tables")
    parser.add_argument("--limit", type=int, default=100, help=f"rows per listing, at most {MAX_LIMIT} (default: %(default)s)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    end = actions.add_parser("end", help="free an allocation or close a signaling session")
    end.add_argument("kind", choices=("allocation", "session"))
    end.add_argument("id")


class StatusError(Exception):
    """The node could not be asked, or refused; the message says why."""


def call(base: str, token: str, method: str, path: str) -> dict:
    """One admin API call; the decoded JSON answer. Raises StatusError."""
    request = urllib.request.Request(base + path, method=method, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            reason = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            reason = e.reason
        raise StatusError(f"{e.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise StatusError(f"cannot reach {base}: {getattr(e, 'reason', e)}") from None


def _table(kind: str, listing: dict) -> str:
    columns = _COLUMNS[kind]
    rows = [[_cell(item.get(c)) for c in columns] for item in listing["items"]]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = [f"{kind}: {listing['total']}" + (f" (showing {len(rows)})" if len(rows) < listing["total"] else "")]
    if rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def run_command(args: argparse.Namespace) -> int:
    try:
        host, port = parse_host_port(args.metrics)
        if not 0 <= args.limit <= MAX_LIMIT:
            raise ConfigError(f"--limit must lie within 0-{MAX_LIMIT}")
        token_path = args.state_dir / TOKEN_FILE
        try:
            token = token_path.read_text().strip()
        except OSError as e:
            raise StatusError(f"cannot read the admin token {token_path}: {e.strerror}") from None
        base = f"http://{'[' + host + ']' if ':' in host else host}:{port}/admin/"
        if args.action == "end":
            answer = call(base, token, "DELETE", f"{args.kind}s/{args.id}")
            print(json.dumps(answer) if args.json else f"ended {args.kind} {args.id}")
            return 0
        listings = {kind: call(base, token, "GET", f"{kind}?limit={args.limit}") for kind in _COLUMNS}
        if args.json:
            print(json.dumps(listings, indent=2))
        else:
            print("\n\n".join(_table(kind, listing) for kind, listing in listings.items()))
        return 0
    except (ConfigError, StatusError) as e:
        sys.stderr.write(f"txrendezvous status: {e}\n")
        return 1
