"""The scripts behind BENCHMARKS.md, grouped by topic; common.py and quickstart_stages.py are shared."""
