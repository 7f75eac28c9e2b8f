"""``txrendezvous accounts``: add, remove and list users, reset a password.

    txrendezvous accounts --db STATE_DIR/accounts.sqlite add alice
    txrendezvous accounts --db postgresql://txr@db.example/accounts list
    txrendezvous accounts --db ... passwd alice
    txrendezvous accounts --db ... remove alice
    txrendezvous accounts --db ... list

Passwords are read from the terminal (twice), or from standard input with
``--password-stdin`` for scripts; never from the command line, where other
users could see them. New names and passwords follow the rules of
``rendezvous.node.accounts.check_new_account`` (as open registration does).
"""

import argparse
import datetime
import getpass
import sys

from relay.config import default_state_dir

from rendezvous.node.accounts import AccountError, AccountStore, StoreUnavailable, check_new_account


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=str(default_state_dir() / "accounts.sqlite"),
                        help="the account store: an SQLite file or a postgresql:// URL (default: %(default)s)")
    parser.add_argument("--realm", default="txrendezvous",
                        help="TURN realm the relay keys are made for (default: %(default)s)")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("add", "create a user"), ("passwd", "reset a user's password"),
                       ("remove", "delete a user and their buddy lists")):
        actions.add_parser(name, help=text).add_argument("user")
    actions.add_parser("list", help="list users")


def _password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {args.user}: ")
    if first != getpass.getpass("again: "):
        raise AccountError("the passwords differ")
    return first


def run_command(args: argparse.Namespace) -> int:
    try:
        store = AccountStore(args.db)
        if args.action == "add":
            password = _password(args)
            check_new_account(args.user, password)
            store.add(args.user, password, args.realm)
        elif args.action == "passwd":
            password = _password(args)
            check_new_account(None, password)
            store.set_password(args.user, password, args.realm)
        elif args.action == "remove":
            store.remove(args.user)
        else:
            for name, realm, created in store.names():
                when = datetime.datetime.fromtimestamp(created, datetime.timezone.utc).strftime("%Y-%m-%d")
                print(f"{name}\t{realm}\t{when}")
        store.close()
    except (AccountError, StoreUnavailable, OSError) as e:
        print(f"txrendezvous accounts: {e}", file=sys.stderr)
        return 1
    return 0
