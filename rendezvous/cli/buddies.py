"""``txrendezvous buddies``: ask for, accept, remove and list buddies on a super node.

    txrendezvous buddies SERVER USER PASSWORD add NAME      ask NAME to be a buddy (or accept NAME's request)
    txrendezvous buddies SERVER USER PASSWORD accept NAME   accept NAME's request
    txrendezvous buddies SERVER USER PASSWORD remove NAME   end the buddy relation
    txrendezvous buddies SERVER USER PASSWORD list          each buddy, the relation and whether online

Only accepted buddies may connect to each other (docs/PROTOCOL.md,
buddy-add, buddy-accept, buddy-remove, buddy-list).
"""

from __future__ import annotations

import argparse
import json
import sys

from rendezvous.cli.nat_check import parse_server

OPS = {"add": "buddy-add", "accept": "buddy-accept", "remove": "buddy-remove", "list": "buddy-list"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("server", type=parse_server, help="super node HOST[:PORT] (default port 3478)")
    parser.add_argument("user", help="your account name")
    parser.add_argument("password", help="your password")
    parser.add_argument("action", choices=sorted(OPS), help="what to do")
    parser.add_argument("name", nargs="?", help="the other user (add, accept, remove)")
    parser.add_argument("--tls", action="store_true", help="log in over TLS (e.g. to port 443)")
    parser.add_argument("--insecure", action="store_true", help="accept a self-signed node certificate")
    parser.add_argument("--json", action="store_true", help="print the node's answer as JSON")


def _text(answer: dict) -> str:
    if answer.get("op") == "buddies":
        rows = [f"{b['user']:24} {b['relation']:10} {b.get('state', '')}".rstrip() for b in answer["buddies"]]
        return "\n".join(rows) if rows else "no buddies"
    return f"{answer.get('user')}: {answer.get('state')}"


def run_command(args: argparse.Namespace) -> int:
    if args.action != "list" and not args.name:
        sys.stderr.write(f"txrendezvous buddies: {args.action} needs the other user's name\n")
        return 2
    from twisted.internet import task

    from rendezvous.peer import SignalingClient

    status = {"code": 0}

    async def run(reactor) -> None:
        client = await SignalingClient.login(reactor, args.user, args.password, servers=[args.server],
                                             tls=args.tls, tls_verify=not args.insecure)
        try:
            if args.action == "list":
                answer = {"op": "buddies", "buddies": await client.buddy_list()}
            else:
                answer = await client.request(OPS[args.action], user=args.name)
        finally:
            await client.close()
        sys.stdout.write((json.dumps(answer) if args.json else _text(answer)) + "\n")

    def main(reactor):
        from twisted.internet.defer import Deferred

        def failed(failure) -> None:
            sys.stderr.write(f"txrendezvous buddies: {failure.getErrorMessage()}\n")
            status["code"] = 1

        return Deferred.fromCoroutine(run(reactor)).addErrback(failed)

    try:
        task.react(main)
    except SystemExit as e:
        return status["code"] or int(e.code or 0)
    return status["code"]
