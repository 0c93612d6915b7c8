"""pydiff's benchmark suites (one ``bench_<area>.py`` per area) and the report writer (``report.py``)."""
