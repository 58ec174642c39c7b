"""Benchmark of the song recogniser on real recorded music, noise, speech and room responses.

`python -m bench --corpus DIR --out DIR` queries one split of the corpus (bench/corpus.py:
constants are tuned on dev, reported on test) with degraded excerpts and single windows of the
wearer's scenes, puts the same queries to a baseline revision and to the working tree (each with
its own catalog and threshold), and reports both engines' accuracy and false matches side by
side, and the working tree's speed and size; see `bench/__main__.py` for the options and
bench/corpus_build.py for the corpus.
`python -m bench.streams` streams what a wearer hears (bench/wearer.py) through the webhook of
the working tree and of a baseline revision.
"""
