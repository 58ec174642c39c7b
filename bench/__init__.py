"""Benchmark of the song recogniser on real recorded music, noise, speech and room responses.

`python -m bench --corpus DIR --out DIR` registers most of the corpus, queries it with degraded
excerpts, and reports accuracy, false matches and speed beside a baseline measured in the same
run; see `bench/__main__.py` for the options and ../shared/corpus/README.md for the corpus.
"""
