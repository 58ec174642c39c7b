"""Benchmark of the song recogniser on real recorded music, noise, speech and room responses.

`python -m bench --corpus DIR --out DIR` registers the corpus's catalog, queries one split of it
(bench/corpus.py: constants are tuned on dev, reported on test) with degraded excerpts, and
reports accuracy, false matches and speed beside a baseline measured in the same run; see
`bench/__main__.py` for the options and ../shared/corpus/README.md for the corpus.
`python -m bench.streams` streams what a wearer hears (bench/wearer.py) through the webhook of
the working tree and of a baseline revision.
"""
