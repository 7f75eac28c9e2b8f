"""The field test (docs/NAT_CHECK.md, the field test): opt-in NAT-check and connect() submissions,
kept in the account store's database and summarised on ``/results``.

``records`` says what is kept of a submission, ``store`` keeps it, ``summary``
counts, ``view`` and ``charts`` draw, ``pages`` serves, ``retention`` expires.
"""
