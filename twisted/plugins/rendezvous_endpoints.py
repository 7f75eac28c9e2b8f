"""``rendezvous:`` strings for clientFromString and serverFromString (docs/EMBEDDING.md).

The parser only names its module: ``rendezvous.peer.endpoints`` is imported
when a string is parsed, not when Twisted loads its plugins.
"""

from importlib import import_module

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor, IStreamServerEndpointStringParser)
class NamedEndpointParser:
    """Hands ``prefix:...`` strings to ``parse_client`` / ``parse_server`` of the module it names."""

    def __init__(self, prefix: str, module: str) -> None:
        self.prefix, self.module = prefix, module

    def parseStreamClient(self, reactor, *args, **kwargs):
        return import_module(self.module).parse_client(reactor, *args, **kwargs)

    def parseStreamServer(self, reactor, *args, **kwargs):
        return import_module(self.module).parse_server(reactor, *args, **kwargs)


rendezvous = NamedEndpointParser("rendezvous", "rendezvous.peer.endpoints")
