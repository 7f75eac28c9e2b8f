"""The field test (docs/RESULTS.md): opt-in NAT-check and connect() submissions,
kept in the account store's database and summarised on ``/results``.

``records`` says what is kept of a submission, ``store`` keeps it, ``summary``
counts, ``view`` and ``charts`` draw, ``pages`` serves, ``retention`` expires.
"""
