"""The benchmark harness: ``python -m bench [--smallest|--quick|--full]``.

It seeds a reproducible data set into its own PostgreSQL database, starts cipherfeed as users run it (uvicorn,
uvloop, httptools, one worker, no access log) next to its peers (a bare Starlette route serving the same bytes, a
naive no-cache implementation), measures each scenario of issue 4 against its peer in the same run, and reports
figures and ratios: a markdown table on stdout, ``latest.json`` and ``latest.md`` in the output directory.
Targets are reported as met or not, never asserted: a benchmark is not a test.
"""
