"""The load-test harness behind ``python -m benchmarks.run`` (``just bench``).

One module per concern: ``servers`` (the processes under test), ``procfs`` (CPU and memory from
``/proc``), ``wrk`` (running wrk and reading its summary), ``provision`` (accounts, sites, projects
and row counts, through the API and the database), ``scenarios`` (the declarative scenario table and
how one is measured), ``copy`` (the sink's COPY in-process), ``checks`` (ratios and targets),
``report`` (Markdown, JSON, PNG) and ``runner`` (one run, pass after pass).
"""
