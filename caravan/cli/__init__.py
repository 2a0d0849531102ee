"""The ``caravan`` command."""
