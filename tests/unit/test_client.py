"""The long-lived Client's bookkeeping, on task.Clock."""

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from rendezvous.peer.client import Client
from rendezvous.peer.connector import _Options


class Signaling:
    """What a Client asks of its login here: a user name, handlers, and close."""

    user = "alice"
    closed = False

    def on(self, op, callback):
        pass

    def close(self):
        self.closed = True
        return succeed(None)


class EndingSession:
    """A session whose close ends it at once, taking it out of its client's list (as when_closed does)."""

    def __init__(self, client):
        self.client, self.closed = client, False

    def close(self):
        self.closed = True
        self.client.sessions.remove(self)
        return succeed(None)


def test_close_ends_every_session_though_each_leaves_the_list_as_it_closes():
    """Client.close closes all its sessions and logs out, however their closing changes the list."""
    client = Client(Clock(), Signaling(), _Options(upnp=False), None)
    sessions = [EndingSession(client) for _ in range(4)]
    client.sessions = list(sessions)
    client.close()
    assert [s.closed for s in sessions] == [True] * 4 and client.signaling.closed
