"""Analytics: pool and investor figures computed by DuckDB from the ledger, cached under the ledger version.

``metrics`` holds the use cases (with access control), ``engine`` the vectorised
computation, ``loader`` the trip from the database to Arrow, ``cache`` the
version-keyed cache, ``report`` the ``pooldesk report`` output, ``exports`` and
``pdf`` the files people download.
"""
